"""Moved: `castlib.evaluate` is now `castlib.scoring.evaluation`."""

raise ImportError("castlib.evaluate moved to castlib.scoring.evaluation; import it from there")
