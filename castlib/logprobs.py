"""Moved: `castlib.logprobs` is now `castlib.scoring.logprobs`."""

raise ImportError("castlib.logprobs moved to castlib.scoring.logprobs; import it from there")
