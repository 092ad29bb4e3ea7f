"""Moved: `castlib.methods.kasa` is now `castlib.methods.adapters.kasa`."""

raise ImportError(
    "castlib.methods.kasa moved to castlib.methods.adapters.kasa; import it from there"
)
