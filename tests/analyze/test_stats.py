import numpy as np
import pytest

from peftbench.analyze.stats import mcnemar
from peftbench.evaluate.intervals import average_ci, bootstrap_ci


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 500, 5000):
        correct = rng.random(n) < 0.7
        low, high = bootstrap_ci(correct)
        assert low <= correct.mean() <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(2 * 1.96 * np.sqrt(0.7 * 0.3 / 500), rel=0.15)  # the normal approximation


def test_average_interval_contains_the_average() -> None:
    per_dataset = [[True] * 30 + [False] * 10, [True] * 10 + [False] * 30]
    low, high = average_ci(per_dataset)
    assert low < 0.5 < high and high - low < 0.3


def test_identical_predictions_give_p_one() -> None:
    outcomes = {i: i % 3 == 0 for i in range(200)}
    test = mcnemar(outcomes, dict(outcomes))
    assert test.p_value == 1.0 and test.difference == 0.0 and test.n == 200


def test_a_clear_difference_is_significant() -> None:
    better = {i: i % 10 != 0 for i in range(200)}  # 90%
    worse = {i: i % 2 == 0 for i in range(200)}  # 50%
    test = mcnemar(better, worse)
    assert test.p_value < 0.05 and test.difference == pytest.approx(0.4)
    assert (test.only_first, test.only_second) == (100, 20)  # odd indices; multiples of ten


def test_only_shared_examples_are_paired() -> None:
    test = mcnemar({0: True, 1: True, 2: False}, {1: False, 2: False, 3: True})
    assert test.n == 2 and test.only_first == 1 and test.only_second == 0
