import json
import logging

import pytest
from tiny import LLM_ADAPTERS, make_tokenizer

from peftbench.data.prompts import IGNORE_INDEX, build_prompt, tokenize_example
from peftbench.data.registry import benchmark_names, get_dataset
from peftbench.data.sources import load_test_examples, load_train_examples
from peftbench.errors import UserError

EXAMPLE = {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_nine_benchmarks_and_the_aliases_of_the_official_code() -> None:
    assert benchmark_names() == [
        "boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "obqa", "csqa"
    ]  # fmt: skip
    for alias, name in [("social_i_qa", "siqa"), ("hellas", "hellaswag"), ("winog", "winogrande"),
                        ("ARC-Easy", "arc_easy"), ("arcc", "arc_challenge"), ("openbookqa", "obqa"),
                        ("commonsense_qa", "csqa"), ("common_170k", "common_170k")]:  # fmt: skip
        assert get_dataset(alias).name == name


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown dataset 'mmlu'; known datasets: boolq, piqa"):
        get_dataset("mmlu")


def test_template_is_llm_adapters_alpaca_template() -> None:
    assert build_prompt(EXAMPLE) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nIs the sky blue?\n\n### Response:\n"
    )
    with_input = build_prompt({**EXAMPLE, "input": "context"})
    assert "paired with an input" in with_input and "### Input:\ncontext\n\n### Response:\n" in with_input


def test_labels_mask_exactly_the_prompt(tokenizer) -> None:
    encoded = tokenize_example(EXAMPLE, tokenizer, max_length=256, train_on_inputs=False)
    prompt_ids = tokenizer(build_prompt(EXAMPLE))["input_ids"]
    n_prompt = len(prompt_ids)
    assert encoded["input_ids"][:n_prompt] == prompt_ids
    assert encoded["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert encoded["labels"][n_prompt:] == encoded["input_ids"][n_prompt:]
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded["labels"][n_prompt:-1]) == EXAMPLE["output"]


def test_train_on_inputs_keeps_every_label(tokenizer) -> None:
    encoded = tokenize_example(EXAMPLE, tokenizer, max_length=256, train_on_inputs=True)
    assert encoded["labels"] == encoded["input_ids"]


def test_truncated_example_gets_no_eos(tokenizer) -> None:
    encoded = tokenize_example(EXAMPLE, tokenizer, max_length=10, train_on_inputs=True)
    assert len(encoded["input_ids"]) == 10 and tokenizer.eos_token_id not in encoded["input_ids"]


def test_local_test_sets_load_with_their_counts(data_dir) -> None:
    counts = {"boolq": 3270, "piqa": 1838, "siqa": 1954, "winogrande": 1267, "arc_easy": 2376,
              "arc_challenge": 1172, "obqa": 500, "hellaswag": 165, "csqa": 1221}  # fmt: skip
    for name, count in counts.items():
        examples, _ = load_test_examples(name, data_dir)
        assert len(examples) == count, name


def test_commonsense_qa_official_schema_is_converted(data_dir) -> None:
    examples, path = load_test_examples("csqa", data_dir)
    assert path.name == "dev_rand_split.jsonl"
    first = examples[0]  # "A revolving door ... security measure at a what?", answerKey A = bank
    assert first["answer"] == "answer1" and first["output"] == "the correct answer is answer1"
    assert first["instruction"].startswith("Please choose the correct answer to the question: A revolving door")
    assert (
        "Answer1: bank Answer2: library Answer3: department store Answer4: mall Answer5: new york"
        in first["instruction"]
    )
    assert first["instruction"].endswith("Answer format: answer1/answer2/answer3/answer4/answer5")
    assert {e["answer"] for e in examples} == {f"answer{i}" for i in range(1, 6)}


def test_common_170k_is_rebuilt_from_task_train_files_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        examples, paths = load_train_examples("common_170k", str(LLM_ADAPTERS))
    assert len(examples) == 9427 + 2251 + 1119 + 4957
    assert [p.parent.name for p in paths] == ["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]
    assert "missing tasks: piqa, siqa, hellaswag, winogrande" in caplog.text


def test_missing_data_names_what_was_looked_for(tmp_path) -> None:
    with pytest.raises(UserError, match=r"no test data for piqa: looked for piqa/\{test.json\}"):
        load_test_examples("piqa", str(tmp_path))
    with pytest.raises(UserError, match="no training data for common_170k"):
        load_train_examples("common_170k", str(tmp_path))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"instruction": "q", "output": "the correct answer is maybe", "answer": "maybe"},
            "answer 'maybe', not one of",
        ),
        ({"instruction": "", "output": "o", "answer": "true"}, "example 1 lacks instruction"),
    ],
)
def test_bad_records_are_refused_with_file_and_index(tmp_path, record: dict, message: str) -> None:
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text(json.dumps([EXAMPLE, record]))
    with pytest.raises(UserError, match=message):
        load_test_examples("boolq", str(tmp_path))


def test_malformed_json_is_reported_with_its_line(tmp_path) -> None:
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.json").write_text('[{"instruction": "q",\n oops]')
    with pytest.raises(UserError, match=r"boolq/test.json: not valid JSON \(line 2"):
        load_test_examples("boolq", str(tmp_path))
