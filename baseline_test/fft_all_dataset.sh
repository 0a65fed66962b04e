#!/usr/bin/env bash
# Evaluate the fft checkpoint (default: the newest run in results_fft/) on all nine benchmarks.
#   bash baseline_test/fft_all_dataset.sh [CKPT]        (settings: see eval_all_datasets.sh)
exec bash "$(dirname "$0")/eval_all_datasets.sh" fft "$@"
