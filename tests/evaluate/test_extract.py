import pytest

from peftbench.data.registry import get_dataset
from peftbench.evaluate.extract import extract_answer


@pytest.mark.parametrize(
    ("dataset", "text", "expected"),
    [
        ("boolq", "the correct answer is false", "false"),
        ("boolq", "True, the correct answer is true", "true"),  # case-sensitive, as LLM-Adapters
        ("piqa", "the correct answer is solution2 not solution1", "solution2"),
        ("siqa", "answer3", "answer3"),
        ("arc_easy", "the correct answer is answer5", "answer5"),
        ("obqa", "I think answer4.", "answer4"),
        ("hellaswag", "the correct answer is ending1", "ending1"),
        ("winogrande", "option2 fits", "option2"),
        ("csqa", "the correct answer is answer5", "answer5"),
        ("boolq", "I do not know", ""),
        ("siqa", "the correct answer is answer4", ""),  # not one of SIQA's three options
    ],
)
def test_first_answer_keyword_of_the_dataset(dataset: str, text: str, expected: str) -> None:
    assert extract_answer(text, get_dataset(dataset).keywords) == expected
