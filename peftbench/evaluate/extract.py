"""Answer extraction as LLM-Adapters does it: the first answer keyword in the generated text.

Matching is case-sensitive, as in LLM-Adapters' ``extract_answer``, so numbers stay comparable
with the papers that use it. No keyword gives the empty string (counted as wrong).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache


@lru_cache(maxsize=64)
def _pattern(keywords: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first, so that a keyword that is a prefix of another (answer1, answer10) cannot shadow it.
    return re.compile("|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True)))


def extract_answer(text: str, keywords: Sequence[str]) -> str:
    match = _pattern(tuple(keywords)).search(text.strip())
    return match.group(0) if match else ""
