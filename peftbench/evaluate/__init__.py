"""Evaluation: generate answers for a benchmark's prompts, extract the answer keyword, score, write results."""
