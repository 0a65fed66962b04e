"""Evaluation results read into numbers: the accuracy table (rows per method and variant, 95% intervals) and its
statistics (bootstrap intervals, McNemar tests, Holm's correction). It writes no files: ``report`` does."""
