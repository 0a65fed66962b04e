"""The official math scorers, case by case from their source.

HiRA: metamath_eval.py of hqsiswiliam/hira (f75f0cf). LLM-Adapters: evaluate.py of
AGI-Edgerunners/LLM-Adapters (8166572). Line numbers below are from those files.
"""

from fractions import Fraction

import pytest

from peftbench.evaluate.math_answers import (
    SCORERS,
    hira_correct,
    hira_number,
    llm_adapters_correct,
    llm_adapters_letter,
    llm_adapters_number,
    number_text,
)

HUGE = "9" * 400  # parses to inf as a float


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # fractions: value through Fraction, then round() (metamath_eval.py:53-56)
        ("The answer is: 3/4", 1),
        ("The answer is: 7/2", 4),
        ("The answer is: 5/2", 2),  # round() is half to even
        ("The answer is: -3/4", -1),
        ("The answer is: 6/4", 2),
        # x/0 is read as x (:50-51), not as an error
        ("The answer is: 5/0", 5),
        ("The answer is: -5/0", -5),
        # decimals and rounding (:62)
        ("The answer is: 2.5", 2),
        ("The answer is: 3.5", 4),
        ("The answer is: 18.0", 18),
        ("The answer is: .5", 0),
        # signs (the regex allows one leading - or +, :44)
        ("The answer is: -7", -7),
        ("The answer is: +5", 5),
        # commas: removed, but the regex takes one separator only (official behaviour)
        ("The answer is: 1,234", 1234),
        ("The answer is: 1,234,567", 1234),
        ("The answer is: $1,000.50", 1000),
        # the first number after the marker, whatever follows it (:43-44)
        ("The answer is: 18 dollars.", 18),
        ("The answer is: x = 12, so 13", 12),
        ("The answer is:    18", 18),  # stripped (:43)
        # the LAST marker counts (:41, :43), numbers before it are ignored
        ("The answer is: 5. Wait, no. The answer is: 6", 6),
        ("I had 12 apples and 3 pears. The answer is: 7", 7),
    ],
)
def test_hira_number(text: str, expected: int) -> None:
    assert hira_number(text) == expected
    assert isinstance(hira_number(text), int)


@pytest.mark.parametrize(
    "text",
    [
        "18",  # no marker (:65-66)
        "The answer is 18",  # the marker is 'The answer is: ', colon and space included
        "The answer is:18",
        "The answer is: eighteen",  # no number (:63-64)
        "The answer is: /4",  # numerator '' is not a number (:49, :57-58)
        # official crashes, "no answer" here (never a traceback):
        "The answer is: 5/00",  # the official Fraction raises on a zero denominator
        f"The answer is: -{HUGE}",  # round(-inf) raises; :60 only checks +inf
        f"The answer is: {HUGE}/0",  # round(inf) raises
        f"The answer is: {HUGE}/7",  # int / int overflows a float
        f"The answer is: {HUGE}",  # +inf: None officially too (:60-61)
    ],
)
def test_hira_number_none(text: str) -> None:
    assert hira_number(text) is None


@pytest.mark.parametrize(("text", "n", "d"), [("3/4", 3, 4), ("7/2", 7, 2), ("5/2", 5, 2), ("-3/4", -3, 4)])
def test_stdlib_fraction_gives_the_exact_value(text: str, n: int, d: int) -> None:
    frac = Fraction(text)
    assert frac.numerator / frac.denominator == n / d
    assert hira_number(f"The answer is: {text}") == round(n / d)


@pytest.mark.parametrize("text", ["3/4", "7/2", "5/2", "-3/4", "+3/4", "6/4", "12/5", "123456/789"])
def test_values_agree_with_the_official_fraction_package(text: str) -> None:
    # metamath_eval.py:19 imports Fraction from the PyPI package `fraction`; not a dependency here.
    official = pytest.importorskip("fraction").Fraction(text)
    assert hira_number(f"The answer is: {text}") == round(float(official.numerator / official.denominator))


@pytest.mark.parametrize(
    ("text", "gold", "correct"),
    [
        ("The answer is: 18", "18", True),
        ("The answer is: 18", "18.0", True),
        ("The answer is: 1,234", "1234", True),
        ("The answer is: 3/4", "1", True),
        ("The answer is: 3.5", "3.5", False),  # the prediction is rounded, the gold is not (:118-119)
        ("The answer is: 17", "18", False),
        ("18", "18", False),  # no marker
        ("The answer is: 18", "eighteen", False),  # official: float(gold) raises
    ],
)
def test_hira_correct(text: str, gold: str, correct: bool) -> None:
    assert hira_correct(text, gold) is correct


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 18.", 18.0),  # '18.' (evaluate.py:276)
        ("so 1,234 apples", 1234.0),  # commas removed first (:275)
        ("from 5 to 7", 7.0),  # the LAST number (:279)
        ("the answer is -3.5", -3.5),
        ("5-3", -3.0),  # a hyphen reads as a minus sign
        ("it costs .5", 5.0),  # a number needs a leading digit
        ("3.2.1", 1.0),
        ("18</s>", 18.0),
        ("0.6666666666666666", 0.6666666666666666),
    ],
)
def test_llm_adapters_number(text: str, expected: float) -> None:
    assert llm_adapters_number(text) == expected


@pytest.mark.parametrize("text", ["no numbers here", "", f"it is {HUGE}"])
def test_llm_adapters_number_none(text: str) -> None:
    # official: float('inf') (:277-278), which never matches a label
    assert llm_adapters_number(text) is None


@pytest.mark.parametrize(
    ("text", "gold", "correct"),
    [
        ("The answer is 18.0", "18.0", True),
        ("The answer is 18.0005", "18", True),  # abs difference <= 0.001 (:94, :112)
        ("The answer is 18.002", "18", False),
        ("The answer is 0.6667", "0.6666666666666666", True),
        ("The answer is 1,000", "1000.0", True),
        ("The answer is 4", "-4.0", False),
        ("no number", "5", False),
        ("The answer is 5", "five", False),  # official: float(label) raises
    ],
)
def test_llm_adapters_correct_number(text: str, gold: str, correct: bool) -> None:
    assert llm_adapters_correct(text, gold, multiple_choice=False) is correct


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the answer is C", "C"),
        ("  (D) 2.65", "D"),
        ("the answer is B, not C", "B"),  # the FIRST capital A-E (evaluate.py:292, :296)
        ("Answer: C", "A"),  # ... even inside a word, as the official code does
        ("Each apple: the answer is (C)", "E"),
        ("the answer is c", None),  # case-sensitive; '' officially (:298)
    ],
)
def test_llm_adapters_letter(text: str, expected: str | None) -> None:
    assert llm_adapters_letter(text) == expected


@pytest.mark.parametrize(
    ("text", "gold", "correct"),
    [
        ("the answer is C", "C", True),
        ("Answer: C", "C", False),
        ("the answer is c", "C", False),
        ("no letter", "", True),  # :105 compares the gold with '' when nothing is found
    ],
)
def test_llm_adapters_correct_letter(text: str, gold: str, correct: bool) -> None:
    assert llm_adapters_correct(text, gold, multiple_choice=True) is correct


@pytest.mark.parametrize(
    ("value", "text"),
    [(18, "18"), (18.0, "18"), (-3.5, "-3.5"), (-3, "-3"), (0.6666666666666666, "0.6666666666666666"), (1e20, "1e+20")],
)
def test_number_text(value: float, text: str) -> None:
    assert number_text(value) == text


def test_scorer_names() -> None:
    assert set(SCORERS) == {"hira-number", "llm-adapters-number", "llm-adapters-letter"}


@pytest.mark.parametrize(
    ("name", "text", "gold", "expected"),
    [
        ("hira-number", "The answer is: 18 dollars", "18", ("18", True)),
        ("hira-number", "The answer is: -3", "-3.0", ("-3", True)),
        ("hira-number", "The answer is: 3.5", "3.5", ("4", False)),
        ("hira-number", "18", "18", (None, False)),
        ("llm-adapters-number", "The answer is -3.5.", "-3.5", ("-3.5", True)),
        ("llm-adapters-number", "The answer is 18.", "18.0", ("18", True)),
        ("llm-adapters-number", "no idea", "18", (None, False)),
        ("llm-adapters-letter", "the answer is (C)", "C", ("C", True)),
        ("llm-adapters-letter", "the answer is (C)", "D", ("C", False)),
        ("llm-adapters-letter", "no idea", "D", (None, False)),
    ],
)
def test_scorers(name: str, text: str, gold: str, expected: tuple[str | None, bool]) -> None:
    assert SCORERS[name](text, gold) == expected
