"""``python -m castlib.repro.runs CONFIG.yaml [...]``: the same command as ``castlib run``."""

from .cli import main

raise SystemExit(main())
