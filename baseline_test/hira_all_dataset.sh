#!/usr/bin/env bash
# Evaluate the hira checkpoint (default: the newest run in results_hira/) on all nine benchmarks.
#   bash baseline_test/hira_all_dataset.sh [CKPT]        (settings: see eval_all_datasets.sh)
exec bash "$(dirname "$0")/eval_all_datasets.sh" hira "$@"
