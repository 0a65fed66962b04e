"""Converter parity: every example in the published LLM-Adapters files round-trips through our converters.

The raw records are not available offline, so each published instruction is parsed back into a record
of the hub schema, converted, and compared with the original text and answer: any difference in
wording, separators or answer mapping between our templates and LLM-Adapters' fails.
"""

from __future__ import annotations

import json
import re

import pytest
from tiny import LLM_ADAPTERS

from peftbench.data import converters

MC = r"Please choose the correct answer to the question: (?P<q>.*)\n\n(?P<options>Answer1: .*)\n\nAnswer format: \S+"


def _options(text: str, prefix: str) -> list[str]:
    return re.split(rf" ?{prefix}\d: ", text)[1:]


def _letters(texts: list[str]) -> list[str]:
    return [chr(ord("A") + i) for i in range(len(texts))]


def parse_boolq(m: re.Match, answer: str) -> dict:
    return {"question": m["q"], "answer": answer == "true", "passage": "unused"}


def parse_piqa(m: re.Match, answer: str) -> dict:
    return {"goal": m["goal"], "sol1": m["s1"], "sol2": m["s2"], "label": int(answer[-1]) - 1}


def parse_siqa(m: re.Match, answer: str) -> dict:
    a, b, c = _options(m["options"], "Answer")
    context, question = m["q"].rsplit(" ", 1)  # LLM-Adapters joins "context question" with one space
    return {"context": context, "question": question, "answerA": a, "answerB": b, "answerC": c, "label": answer[-1]}


def parse_hellaswag(m: re.Match, answer: str) -> dict:
    return {"activity_label": m["activity"], "ctx": m["ctx"], "endings": _options(m["endings"], "Ending"),
            "label": str(int(answer[-1]) - 1)}  # fmt: skip


def parse_winogrande(m: re.Match, answer: str) -> dict:
    return {"sentence": m["sentence"], "option1": m["o1"], "option2": m["o2"], "answer": answer[-1]}


def parse_arc(m: re.Match, answer: str) -> dict:
    texts = _options(m["options"], "Answer")
    labels = _letters(texts)
    return {"question": m["q"], "choices": {"text": texts, "label": labels}, "answerKey": labels[int(answer[6:]) - 1]}


def parse_obqa(m: re.Match, answer: str) -> dict:
    record = parse_arc(m, answer)
    return {"question_stem": record.pop("question"), **record}


CASES = {
    "boolq": (r"Please answer the following question with true or false, question: (?P<q>.*)\?\n\nAnswer format: "
              r"true/false", parse_boolq, converters.boolq),
    "piqa": (r"Please choose the correct solution to the question: (?P<goal>.*)\n\nSolution1: (?P<s1>.*)\n\n"
             r"Solution2: (?P<s2>.*)\n\nAnswer format: solution1/solution2", parse_piqa, converters.piqa),
    "social_i_qa": (MC, parse_siqa, converters.social_i_qa),
    "hellaswag": (r"Please choose the correct ending to complete the given sentence: (?P<activity>[^:]*): (?P<ctx>.*)"
                  r"\n\n(?P<endings>Ending1: .*)\n\nAnswer format: \S+", parse_hellaswag, converters.hellaswag),
    "winogrande": (r"Please choose the correct answer to fill in the blank to complete the given sentence: "
                   r"(?P<sentence>.*)\n\nOption1: (?P<o1>.*) Option2: (?P<o2>.*) Answer format: option1/option2",
                   parse_winogrande, converters.winogrande),
    "ARC-Easy": (MC, parse_arc, converters.arc),
    "ARC-Challenge": (MC, parse_arc, converters.arc),
    "openbookqa": (MC, parse_obqa, converters.openbookqa),
}  # fmt: skip


@pytest.mark.parametrize("folder", CASES)
def test_every_published_example_round_trips(folder: str) -> None:
    pattern, parse, convert = CASES[folder]
    total = 0
    for path in sorted((LLM_ADAPTERS / folder).glob("*.json")):
        for index, example in enumerate(json.loads(path.read_text())):
            match = re.fullmatch(pattern, example["instruction"], flags=re.DOTALL)
            assert match, f"{path.name}[{index}] does not have LLM-Adapters' {folder} layout"
            converted = convert(parse(match, example["answer"]))
            assert converted == {**example, "input": ""}, f"{path.name}[{index}]"
            total += 1
    assert total > 100


def test_original_release_schemas_convert_like_the_hub_ones() -> None:
    hub = {"question": "Why?", "choices": {"text": ["a", "b"], "label": ["1", "2"]}, "answerKey": "2"}
    release = {"question": {"stem": "Why?", "choices": [{"text": "a", "label": "1"}, {"text": "b", "label": "2"}]},
               "answerKey": "2"}  # fmt: skip
    assert converters.arc(hub) == converters.arc(release)
    assert converters.arc(hub)["answer"] == "answer2"
    obqa_hub = {"question_stem": "Why?", "choices": hub["choices"], "answerKey": "2"}
    assert converters.openbookqa(obqa_hub) == converters.openbookqa(release)


@pytest.mark.parametrize(
    ("convert", "record", "message"),
    [
        (converters.boolq, {"question": "q", "answer": "yes"}, "not a boolean"),
        (converters.piqa, {"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, "outside the 2 options"),
        (
            converters.hellaswag,
            {"activity_label": "x", "ctx": "c", "endings": ["a"] * 4, "label": ""},
            "invalid literal",
        ),
    ],
)
def test_bad_labels_are_refused(convert, record: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert(record)
