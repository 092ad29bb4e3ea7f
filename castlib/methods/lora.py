"""Moved: `castlib.methods.lora` is now `castlib.methods.adapters.lora`."""

raise ImportError(
    "castlib.methods.lora moved to castlib.methods.adapters.lora; import it from there"
)
