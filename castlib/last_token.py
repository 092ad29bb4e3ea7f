"""Moved: `castlib.last_token` is now `castlib.scoring.last_token`."""

raise ImportError("castlib.last_token moved to castlib.scoring.last_token; import it from there")
