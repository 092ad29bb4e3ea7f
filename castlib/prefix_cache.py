"""Moved: `castlib.prefix_cache` is now `castlib.scoring.prefix_cache`."""

raise ImportError(
    "castlib.prefix_cache moved to castlib.scoring.prefix_cache; import it from there"
)
