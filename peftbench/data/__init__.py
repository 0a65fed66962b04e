"""Benchmarks as data: registry entries, where their files come from, and how they become tokens."""
