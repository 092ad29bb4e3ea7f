#!/usr/bin/env bash
# Create benchmarks/.venv-bench: a virtual environment for the peer steering libraries
# (steering-vectors, repeng) layered on top of the project venv, so the bench and the interop
# parity tests (tests/test_interop.py) can compare castlib with them on the same model. The peers
# are never project dependencies and `make setup` does not install them.
#
#   bash benchmarks/setup_peers.sh            # uses ./.venv as the project venv
#   PROJECT_VENV=/path/to/venv bash benchmarks/setup_peers.sh
#   benchmarks/.venv-bench/bin/python -m benchmarks.bench --json benchmarks/results/bench.json
#   benchmarks/.venv-bench/bin/python -m pytest tests/test_interop.py     # or: make test-peers
#
# A venv made from another venv's python inherits the *base* interpreter's site-packages, not
# the project venv's, so a .pth file adds the project venv's site-packages (torch, transformers,
# the editable castlib) with site.addsitedir, after the bench venv's own. The peers' pins predate
# this stack (steering-vectors 0.12 pins transformers<5, repeng 0.4 pins numpy<2), so they go in
# with --no-deps after their one real extra dependency (scikit-learn, for repeng), and pip's
# conflict report about those pins is switched off (--no-warn-conflicts): the conflict is known,
# and tests/test_interop.py checks that both peers give castlib's activations exactly.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PROJECT_VENV="${PROJECT_VENV:-$ROOT/.venv}"
BENCH_VENV="${BENCH_VENV:-$HERE/.venv-bench}"
PY="$PROJECT_VENV/bin/python"
[ -x "$PY" ] || { echo "project venv not found at $PROJECT_VENV (set PROJECT_VENV)" >&2; exit 1; }

if [ ! -x "$BENCH_VENV/bin/python" ]; then
  "$PY" -m venv --system-site-packages "$BENCH_VENV"
fi
PROJECT_SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BENCH_SITE="$("$BENCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$PROJECT_SITE')" > "$BENCH_SITE/_castlib_project_venv.pth"

# the versions the benchmark and the parity tests were run with
PEERS=("steering-vectors==0.12.2" "repeng==0.4.0")
"$BENCH_VENV/bin/python" -m pip install --quiet "scikit-learn==1.9.1"
"$BENCH_VENV/bin/python" -m pip install --quiet --no-deps --no-warn-conflicts "${PEERS[@]}"
echo "installed ${PEERS[*]} without their dependency pins (transformers<5, numpy<2): see the header"
"$BENCH_VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch, transformers
for name in ("steering-vectors", "repeng", "scikit-learn"):
    print(f"{name} {md.version(name)}")
print(f"torch {torch.__version__} (from {torch.__file__}), transformers {transformers.__version__}")
PY
echo "peer venv ready: $BENCH_VENV"
