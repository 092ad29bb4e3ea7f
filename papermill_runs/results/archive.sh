#!/usr/bin/env bash
# Archive every finished run of a batch output directory into papermill_runs/results/<name>/, kept
# in git: its records (run.json, results.json with per-example predictions, CSV tables), its PNG
# figures and its executed notebook <stem>.ipynb, with the machine paths of run.json and of the
# notebook replaced (repository root removed, home directory -> ~) and the image outputs of an
# executed notebook over ARCHIVE_MAX_NOTEBOOK_MB (default 4) dropped (its PNGs stay beside it).
# Then aggregates the archive: summary.csv, runs.csv, predictions.jsonl.gz (kept) and figures/
# (git-ignored). Runs with $PYTHON (default: python; run it with the project's environment
# active). The work is done by castlib.repro.archive (python -m castlib.repro.archive --help).
#   bash papermill_runs/results/archive.sh runs_out/full_cpu full_cpu
set -euo pipefail
src=${1:?usage: archive.sh OUTPUT_DIR NAME}
name=${2:?usage: archive.sh OUTPUT_DIR NAME}
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
"${PYTHON:-python}" -m castlib.repro.archive "$src" "$here/$name" --root "$root" \
  --max-notebook-mb "${ARCHIVE_MAX_NOTEBOOK_MB:-4}"
