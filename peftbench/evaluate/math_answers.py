"""The official math answer scorers of HiRA and LLM-Adapters, rule for rule.

Accuracy on GSM8K and friends is only comparable with a paper when the answer is pulled out of the
generated text the way that paper's own script does it, quirks included, so each rule below copies
one official function and cites it. Where an official function crashes on some input, ours returns
"no answer" instead: never a traceback, since a crash there is a defect, not a rule.

Sources:
- HiRA: ``metamath_eval.py`` of hqsiswiliam/hira at f75f0cf (``extract_answer_number``, lines 40-67;
  the comparison ``pred_num == float(_answer['answer'])``, lines 117-119).
- LLM-Adapters: ``evaluate.py`` of AGI-Edgerunners/LLM-Adapters at 8166572 (``extract_answer_number``,
  lines 272-287; ``extract_answer_letter``, lines 290-298; the comparison, lines 94 and 103-114).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from fractions import Fraction

_HIRA_MARKER = "The answer is: "
# metamath_eval.py:44. One optional separator only, so '1,234,567' matches '1,234' (then 1234).
_HIRA_NUMBER = re.compile(r"[\-+]?\d*[\.,/]?\d+")
# evaluate.py:276, applied after every comma is removed (evaluate.py:275).
_LLM_ADAPTERS_NUMBER = re.compile(r"-?\d+\.?\d*")
# evaluate.py:292: the first capital A-E anywhere in the text, even inside a word ('Answer' -> 'A').
_LLM_ADAPTERS_LETTER = re.compile(r"A|B|C|D|E")
# evaluate.py:94: a prediction within this of the label counts as correct.
_LLM_ADAPTERS_TOLERANCE = 0.001


def _is_number(s: str) -> bool:
    """HiRA's ``is_number`` (metamath_eval.py:24-37): float() or a single numeric character."""
    try:
        float(s)
        return True
    except ValueError:
        pass
    try:
        unicodedata.numeric(s)
        return True
    except (TypeError, ValueError):
        return False


def hira_number(text: str) -> int | None:
    """HiRA's ``extract_answer_number`` (metamath_eval.py:40-67): the first number after the LAST
    'The answer is: ', commas dropped, a fraction as its value, rounded half to even by round().

    The official code parses fractions with the PyPI ``fraction`` package (2.2.0), which computes
    through floats; ``fractions.Fraction`` is exact and gives the same result while numerator and
    denominator stay below 2**50 (they differ by one from about 2.2e15 up, far beyond GSM8K).
    """
    parts = text.split(_HIRA_MARKER)
    if len(parts) < 2:  # :42, :66-67
        return None
    match = _HIRA_NUMBER.search(parts[-1].strip())  # :43-44
    if match is None:  # :64-65
        return None
    found = match.group()
    try:
        if "/" in found:  # :46-58
            numerator, denominator = found.split("/")
            if not (_is_number(denominator) and _is_number(numerator)):  # :49, :57-58 ('/4', '-/4')
                return None
            if denominator == "0":  # :50-51: x/0 is read as x, not as an error
                return round(float(numerator.replace(",", "")))
            frac = Fraction(found.replace(",", ""))  # :53-56
            return round(float(frac.numerator / frac.denominator))
        value = float(found.replace(",", ""))  # :60-62
        if value == float("inf"):
            return None
        return round(value)
    except (ZeroDivisionError, OverflowError, ValueError):
        # Official crashes, turned into "no answer" (never a traceback): a denominator of zeros
        # other than '0' ('5/00': the official Fraction raises), and numbers too large for a float
        # (round(-inf), round(inf) after 'x/0', int / int overflowing), which the inf check at :60 misses.
        return None


def hira_correct(text: str, gold: str) -> bool:
    """HiRA's comparison (metamath_eval.py:117-119): ``extracted == float(gold)``, None never equal."""
    predicted = hira_number(text)
    if predicted is None:
        return False
    try:
        return predicted == float(gold)
    except ValueError:  # official: float(gold) raises on a non-numeric gold; ours scores it wrong
        return False


def llm_adapters_number(text: str) -> float | None:
    """LLM-Adapters' ``extract_answer_number`` (evaluate.py:272-287): commas removed, then the LAST
    match of ``-?\\d+\\.?\\d*`` as a float. The official 'inf' for "none found" (:277-278) is None here,
    and so is a number too long for a float (it parses to inf and can never match a label either).
    """
    found = _LLM_ADAPTERS_NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    value = float(found[-1])
    return value if math.isfinite(value) else None


def llm_adapters_letter(text: str) -> str | None:
    """LLM-Adapters' ``extract_answer_letter`` (evaluate.py:290-298): the FIRST capital A-E anywhere in
    the stripped text. The official '' for "none found" is None here.
    """
    match = _LLM_ADAPTERS_LETTER.search(text.strip())
    return match.group() if match else None


def llm_adapters_correct(text: str, gold: str, multiple_choice: bool) -> bool:
    """LLM-Adapters' comparison (evaluate.py:103-114): ``label == letter`` for AQuA (the only
    multiple-choice set, :103), else ``abs(float(label) - number) <= 0.001``.
    """
    if multiple_choice:
        # :105 compares against '' when no letter was found, so an empty gold would match it.
        return gold == (llm_adapters_letter(text) or "")
    predicted = llm_adapters_number(text)
    if predicted is None:  # official: abs(label - inf) <= 0.001 is False
        return False
    try:
        label = float(gold)  # :109-110
    except ValueError:  # official: float(label) raises on a non-numeric gold; ours scores it wrong
        return False
    return abs(label - predicted) <= _LLM_ADAPTERS_TOLERANCE


def number_text(value: float) -> str:
    """A stable text form of an extracted number: '18' for 18 or 18.0, '-3.5' for -3.5."""
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(float(value))


def _hira_number_scorer(text: str, gold: str) -> tuple[str | None, bool]:
    predicted = hira_number(text)
    return (None if predicted is None else number_text(predicted)), hira_correct(text, gold)


def _llm_adapters_number_scorer(text: str, gold: str) -> tuple[str | None, bool]:
    predicted = llm_adapters_number(text)
    answer = None if predicted is None else number_text(predicted)
    return answer, llm_adapters_correct(text, gold, multiple_choice=False)


def _llm_adapters_letter_scorer(text: str, gold: str) -> tuple[str | None, bool]:
    return llm_adapters_letter(text), llm_adapters_correct(text, gold, multiple_choice=True)


# (generated text, gold answer) -> (extracted answer as text, or None when none is found; correct).
SCORERS: dict[str, Callable[[str, str], tuple[str | None, bool]]] = {
    "hira-number": _hira_number_scorer,
    "llm-adapters-number": _llm_adapters_number_scorer,
    "llm-adapters-letter": _llm_adapters_letter_scorer,
}
