#!/usr/bin/env bash
# Copy the records (run.json, results.json, CSV tables) of every finished run of a batch output
# directory into papermill_runs/results/<name>/, so that measured numbers are kept in git.
# Executed notebooks and PNG figures stay in the output directory (rerun to regenerate them).
# Then rebuilds the kept summary.csv and runs.csv from all records there (with $PYTHON, default
# python: run it with the project's environment active); the figures/ it also draws is git-ignored.
#   bash papermill_runs/results/archive.sh runs_out/full_cpu full_cpu
set -euo pipefail
src=${1:?usage: archive.sh OUTPUT_DIR NAME}
name=${2:?usage: archive.sh OUTPUT_DIR NAME}
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/$name"
root="$(cd "$here/../.." && pwd)"  # run.json holds absolute paths; keep them repo-relative in git
find "$src" -name run.json | while read -r run; do
  dir=$(dirname "$run")
  grep -q '"status": "ok"' "$run" || continue
  rel=${dir#"$src"/}
  mkdir -p "$dest/$rel"
  find "$dir" -maxdepth 1 -type f \( -name '*.json' -o -name '*.csv' \) -exec cp {} "$dest/$rel/" \;
  text=$(<"$dest/$rel/run.json")  # literal (not regex) removal of the root prefix
  printf '%s\n' "${text//"$root/"/}" > "$dest/$rel/run.json"
  echo "archived $rel"
done
"${PYTHON:-python}" -m castlib.runs --aggregate-only "$dest"
