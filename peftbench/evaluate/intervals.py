"""Percentile bootstrap intervals of accuracy: recorded with every evaluation (``accuracy_ci``) and used by the
analysis for each cell and each method's average, so the two always give the same interval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
