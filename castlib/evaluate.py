"""Moved: `castlib.evaluate` is now `castlib.scoring.evaluate`."""

raise ImportError("castlib.evaluate moved to castlib.scoring.evaluate; import it from there")
