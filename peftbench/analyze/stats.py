"""Paired tests between methods for accuracy tables (the bootstrap intervals are ``peftbench.evaluate.intervals``,
which every evaluation record carries too)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import binomtest


@dataclass(frozen=True)
class PairedTest:
    n: int  # examples both methods were scored on
    only_first: int  # correct for the first method only
    only_second: int  # correct for the second method only
    difference: float  # accuracy(first) - accuracy(second) on the shared examples
    p_value: float  # exact McNemar test (two-sided binomial test on the discordant pairs)


def mcnemar(first: dict[int, bool], second: dict[int, bool]) -> PairedTest:
    """Compare two methods on the examples both were scored on (keys: example index)."""
    shared = sorted(first.keys() & second.keys())
    only_first = sum(first[i] and not second[i] for i in shared)
    only_second = sum(second[i] and not first[i] for i in shared)
    discordant = only_first + only_second
    p_value = 1.0 if discordant == 0 else binomtest(only_first, discordant, 0.5).pvalue
    difference = (only_first - only_second) / len(shared) if shared else 0.0
    return PairedTest(len(shared), only_first, only_second, difference, float(p_value))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values: controls the chance of any false positive over the whole family."""
    count = len(p_values)
    adjusted = [1.0] * count
    running = 0.0
    for rank, index in enumerate(sorted(range(count), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (count - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
