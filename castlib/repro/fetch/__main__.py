"""``python -m castlib.repro.fetch [TASK ...] --data-dir DIR``: the same command as
``castlib data fetch``."""

from .download import main

raise SystemExit(main())
