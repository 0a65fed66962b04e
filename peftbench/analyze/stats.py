"""Uncertainty for accuracy tables: bootstrap confidence intervals and paired tests between methods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

BOOTSTRAP_SAMPLES = 2000


def bootstrap_means(correct: Sequence[bool], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """Accuracy of `samples` resamples (with replacement) of the per-example outcomes."""
    outcomes = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    return outcomes[rng.integers(0, len(outcomes), size=(samples, len(outcomes)))].mean(axis=1)


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_ci(correct: Sequence[bool], level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy."""
    return interval(bootstrap_means(correct, seed=seed), level)


def average_ci(per_dataset: Sequence[Sequence[bool]], level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Interval of the unweighted average over datasets, each resampled independently."""
    replicates = np.mean([bootstrap_means(c, seed=seed + i) for i, c in enumerate(per_dataset)], axis=0)
    return interval(replicates, level)


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
