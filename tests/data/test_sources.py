import json
import logging

import pytest
from tiny import LLM_ADAPTERS

from peftbench.data.registry import benchmark_names, get_dataset
from peftbench.data.sources import load_test_examples, load_train_examples
from peftbench.errors import UserError

EXAMPLE = {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"}


def test_nine_benchmarks_and_the_aliases_of_the_official_code() -> None:
    assert benchmark_names() == [
        "boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "obqa", "csqa"
    ]  # fmt: skip
    for alias, name in [("social_i_qa", "siqa"), ("hellas", "hellaswag"), ("winog", "winogrande"),
                        ("ARC-Easy", "arc_easy"), ("arcc", "arc_challenge"), ("openbookqa", "obqa"),
                        ("commonsense_qa", "csqa"), ("commonsense_170k", "common_170k")]:  # fmt: skip
        assert get_dataset(alias).name == name


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown dataset .mmlu.; known datasets and groups: boolq, piqa"):
        get_dataset("mmlu")


def test_local_test_sets_load_with_their_counts(data_dir) -> None:
    counts = {"boolq": 3270, "piqa": 1838, "siqa": 1954, "winogrande": 1267, "arc_easy": 2376,
              "arc_challenge": 1172, "obqa": 500, "hellaswag": 165, "csqa": 1221}  # fmt: skip
    for name, count in counts.items():
        assert len(load_test_examples(name, data_dir).examples) == count, name


def test_commonsense_qa_official_schema_is_converted(data_dir) -> None:
    loaded = load_test_examples("csqa", data_dir)
    examples = loaded.examples
    assert loaded.files[0].name == "dev_rand_split.jsonl"
    first = examples[0]  # "A revolving door ... security measure at a what?", answerKey A = bank
    assert first["answer"] == "answer1" and first["output"] == "the correct answer is answer1"
    assert first["instruction"].startswith("Please choose the correct answer to the question: A revolving door")
    assert (
        "Answer1: bank Answer2: library Answer3: department store Answer4: mall Answer5: new york"
        in first["instruction"]
    )
    assert first["instruction"].endswith("Answer format: answer1/answer2/answer3/answer4/answer5")
    assert {e["answer"] for e in examples} == {f"answer{i}" for i in range(1, 6)}


def test_the_commonsense_mix_is_built_from_the_task_train_files_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = load_train_examples("commonsense_mix", str(LLM_ADAPTERS))
    assert len(loaded.examples) == 9427 + 2251 + 1119 + 4957
    assert [p.parent.name for p in loaded.files] == ["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]
    assert "missing tasks: piqa, siqa, hellaswag, winogrande" in caplog.text


def test_commonsense_170k_is_its_own_file_never_the_mix() -> None:
    """Offline, with the four tasks' train files but not the file, it is an error that names the hub source."""
    with pytest.raises(UserError, match=r"no train data for common_170k: looked for common_170k/\{commonsense_170k"
                                        r".*zwhe99/commonsense_170k@main is not in the cache"):  # fmt: skip
        load_train_examples("common_170k", str(LLM_ADAPTERS))


def test_missing_data_names_what_was_looked_for(tmp_path) -> None:
    with pytest.raises(
        UserError, match=r"no test data for piqa: looked for piqa/\{test.json, valid.jsonl\}.*ybisk/piqa@refs/convert"
    ):
        load_test_examples("piqa", str(tmp_path))
    with pytest.raises(UserError, match="no training data for commonsense_mix"):
        load_train_examples("commonsense_mix", str(tmp_path))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"instruction": "q", "output": "the correct answer is maybe", "answer": "maybe"},
            "answer 'maybe', not one of",
        ),
        (
            {"instruction": "", "output": "o", "answer": "true"},
            r"test.json: 1 bad record\(s\): example 1: lacks instruction",
        ),
    ],
)
def test_bad_records_are_refused_with_file_and_index(tmp_path, record: dict, message: str) -> None:
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text(json.dumps([EXAMPLE, record]))
    with pytest.raises(UserError, match=message):
        load_test_examples("boolq", str(tmp_path))
    loaded = load_test_examples("boolq", str(tmp_path), on_bad="skip")
    assert loaded.examples == [EXAMPLE] and loaded.skipped == 1


def test_malformed_json_is_reported_with_its_line(tmp_path) -> None:
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text('[{"instruction": "q",\n oops]')
    with pytest.raises(UserError, match=r"boolq/test.json: not valid JSON \(line 2"):
        load_test_examples("boolq", str(tmp_path))


# A few records of each benchmark's original release schema, written here.
RELEASE_FILES = {
    "boolq/dev.jsonl": [{"question": "is the sky blue", "passage": "p", "title": "t", "answer": True}],
    "piqa/valid.jsonl": [{"goal": "Open a jar", "sol1": "twist", "sol2": "eat"}],
    "piqa/valid-labels.lst": "0\n",
    "social_i_qa/dev.jsonl": [{"context": "Kai ran.", "question": "Why?", "answerA": "a", "answerB": "b",
                               "answerC": "c"}],
    "social_i_qa/dev-labels.lst": "3\n",
    "hellaswag/hellaswag_val.jsonl": [{"activity_label": "Cooking", "ctx": "A man", "endings": ["a", "b", "c", "d"],
                                       "label": 2}],
    "winogrande/dev.jsonl": [{"sentence": "_ won.", "option1": "Ann", "option2": "Bo", "answer": "2"}],
    "ARC-Easy/ARC-Easy-Test.jsonl": [{"question": {"stem": "Why?", "choices": [{"text": "x", "label": "A"},
                                      {"text": "y", "label": "B"}, {"text": "z", "label": "C"}]}, "answerKey": "C"}],
    "openbookqa/test.jsonl": [{"question": {"stem": "What?", "choices": [{"text": "x", "label": "A"},
                               {"text": "y", "label": "B"}]}, "answerKey": "A"}],
}  # fmt: skip
EXPECTED_ANSWERS = {"boolq": "true", "piqa": "solution1", "siqa": "answer3", "hellaswag": "ending3",
                    "winogrande": "option2", "arc_easy": "answer3", "obqa": "answer1"}  # fmt: skip


def write_release_files(root) -> None:
    for name, content in RELEASE_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else "".join(json.dumps(r) + "\n" for r in content)
        path.write_text(text)


def test_original_release_files_are_read_through_the_converters(tmp_path) -> None:
    write_release_files(tmp_path)
    for name, answer in EXPECTED_ANSWERS.items():
        loaded = load_test_examples(name, str(tmp_path))
        assert [e["answer"] for e in loaded.examples] == [answer], name
    (siqa,) = load_test_examples("siqa", str(tmp_path)).examples
    assert siqa["instruction"].startswith("Please choose the correct answer to the question: Kai ran. Why?")


def test_bad_lines_of_release_files_are_skipped_or_refused_with_their_line(tmp_path) -> None:
    path = tmp_path / "winogrande" / "dev.jsonl"
    path.parent.mkdir()
    good = {"sentence": "_ won.", "option1": "Ann", "option2": "Bo", "answer": "1"}
    lines = [good, "{broken", {**good, "answer": "3"}, {"sentence": "_"}]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    every_line = r"winogrande/dev.jsonl: 3 bad record\(s\): line 2: not valid JSON .*; line 3: label .*; line 4: not in"
    with pytest.raises(UserError, match=every_line):
        load_test_examples("winogrande", str(tmp_path))
    loaded = load_test_examples("winogrande", str(tmp_path), on_bad="skip")
    assert len(loaded.examples) == 1 and loaded.skipped == 3
