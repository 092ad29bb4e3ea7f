"""The ``castlib`` console script.

castlib data fetch [TASK ...] --data-dir DIR     download tasks from the Hugging Face hub
castlib data list [--data-dir DIR]               list the tasks in the data directory
castlib quickstart [...]                         the README's main job
castlib run CONFIG.yaml [...]                    run a papermill batch (castlib.repro.runs)

The benchmark suite is research infrastructure, not part of the package: run
``python -m benchmarks.bench --json PATH`` from the repository root.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = args[0], args[1:]
    if command == "data":
        if rest[:1] == ["fetch"]:
            from .repro.fetch import main as fetch_main

            return fetch_main(rest[1:])
        if rest[:1] == ["list"]:
            from .tasks import list_tasks

            data_dir = rest[2] if rest[1:2] == ["--data-dir"] and len(rest) > 2 else None
            print("\n".join(list_tasks(data_dir)))
            return 0
        print("usage: castlib data fetch|list ...", file=sys.stderr)
        return 2
    if command == "quickstart":
        from .quickstart import main as quickstart_main

        return quickstart_main(rest)
    if command == "run":
        from .repro.runs_cli import main as runs_main

        return runs_main(rest)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
