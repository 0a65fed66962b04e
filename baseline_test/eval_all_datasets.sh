#!/usr/bin/env bash
# Evaluate one method's checkpoint on all nine benchmarks, loading the model once.
#   bash baseline_test/eval_all_datasets.sh METHOD [CKPT]
# CKPT: a checkpoint-N folder, a run folder (its best checkpoint) or a results folder (its newest run);
# default results_METHOD. A benchmark whose data is missing is reported and skipped.
# Environment: DATASETS (default all), BATCH (16), BEAM_SIZE and MAX_NEW_TOKENS (default: the checkpoint's
# protocol's, hira: 4 and 16), PROTOCOL (default: the checkpoint's own), MAX_EVAL_SAMPLES, DATA_DIR,
# PYTHON (default: the checkout's .venv if present, else python).
set -euo pipefail
method=${1:?usage: eval_all_datasets.sh METHOD [CKPT]}
ckpt=${2:-${CKPT:-results_$method}}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$([ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python)}

args=(--ckpt "$ckpt" --dataset "${DATASETS:-all}" --batch "${BATCH:-16}")
if [ -n "${BEAM_SIZE:-}" ]; then args+=(--beam_size "$BEAM_SIZE"); fi
if [ -n "${MAX_NEW_TOKENS:-}" ]; then args+=(--max_new_tokens "$MAX_NEW_TOKENS"); fi
if [ -n "${PROTOCOL:-}" ]; then args+=(--protocol "$PROTOCOL"); fi
if [ -n "${MAX_EVAL_SAMPLES:-}" ]; then args+=(--max_eval_samples "$MAX_EVAL_SAMPLES"); fi
if [ -n "${DATA_DIR:-}" ]; then args+=(--data_dir "$DATA_DIR"); fi
echo "evaluating $method: $ckpt"
exec "$python" "$root/train_hira.py" "${args[@]}"
