#!/usr/bin/env bash
# Accuracy table (method x dataset, plus average) over every evaluated run in the results_<method>/ folders
# here (results_hira, results_lora, results_dora, ...; or the folders given), written as CSV and Markdown to
# ${OUT:-results_analysis}/ and printed.
#   bash baseline_test/analyze_all_methods.sh [RESULTS_DIR ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$([ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python)}
if [ $# -gt 0 ]; then
  folders=("$@")
else
  folders=()
  for folder in results_*/; do
    if [ -d "$folder" ] && [ "${folder%/}" != "${OUT:-results_analysis}" ]; then folders+=("${folder%/}"); fi
  done
  if [ ${#folders[@]} -eq 0 ]; then
    echo "error: no results_<method> folder here; run training and evaluation first, or name folders" >&2
    exit 2
  fi
fi
exec "$python" -m peftbench.cli analyze "${folders[@]}" --out "${OUT:-results_analysis}"
