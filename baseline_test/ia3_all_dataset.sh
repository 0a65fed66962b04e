#!/usr/bin/env bash
# Evaluate the ia3 checkpoint (default: the newest run in results_ia3/) on all nine benchmarks.
#   bash baseline_test/ia3_all_dataset.sh [CKPT]        (settings: see eval_all_datasets.sh)
exec bash "$(dirname "$0")/eval_all_datasets.sh" ia3 "$@"
