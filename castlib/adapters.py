"""Moved: `castlib.adapters` is now the `castlib.methods.adapters` package."""

raise ImportError(
    "castlib.adapters moved into castlib.methods.adapters: target modules, module swapping and "
    "merged weights in .layers, the training loop in .training, KaSA's maths in .kasa"
)
