"""Moved: `castlib.fit_store` is now `castlib.methods.fit_store`."""

raise ImportError("castlib.fit_store moved to castlib.methods.fit_store; import it from there")
