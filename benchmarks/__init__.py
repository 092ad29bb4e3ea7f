"""castlib's benchmark suite (research infrastructure, not part of the installed package):
run ``python -m benchmarks.bench`` from the repository root (see ``benchmarks/README.md``)."""
