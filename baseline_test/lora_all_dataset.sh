#!/usr/bin/env bash
# Evaluate the lora checkpoint (default: the newest run in results_lora/) on all nine benchmarks.
#   bash baseline_test/lora_all_dataset.sh [CKPT]        (settings: see eval_all_datasets.sh)
exec bash "$(dirname "$0")/eval_all_datasets.sh" lora "$@"
