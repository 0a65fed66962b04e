"""Math and dialogue as data: their sources in their publishers' schemas, their answer checks, their groups, and
their protocol variants (the commonsense ones unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from task_files import PERSONAS, TURNS, parlai_episode, write_convai2, write_metamath
from tiny import LLM_ADAPTERS, make_tokenizer

from peftbench.data.converters import gsm8k
from peftbench.data.pipeline import hold_out_validation
from peftbench.data.prompts import build_prompt, prompt_version, tokenize_batch
from peftbench.data.protocols import HIRA, get_protocol
from peftbench.data.registry import get_dataset, resolve_names
from peftbench.data.sources import load_test_examples, load_train_examples
from peftbench.errors import UserError


def test_metamath_is_read_as_the_hub_publishes_it(tmp_path: Path) -> None:
    root = write_metamath(tmp_path, count=5)
    path = root / "MetaMathQA" / "MetaMathQA-395K.json"
    records = json.loads(path.read_text())
    records[1]["response"] = "no final answer here"  # not trainable as a math example: skipped and counted
    path.write_text(json.dumps(records))
    loaded = load_train_examples("metamath", str(root))
    assert loaded.skipped == 1 and len(loaded.examples) == 4 and loaded.files == [path]
    first = loaded.examples[0]
    assert first["instruction"] == records[0]["query"] and first["output"] == records[0]["response"]
    assert first["answer"] == "10" and first["input"] == ""
    with pytest.raises(UserError, match="example 1: lacks|no 'The answer is:'"):
        load_train_examples("meta_math", str(root), on_bad="error")


def test_gsm8k_test_set_and_the_math_group(tmp_path: Path) -> None:
    loaded = load_test_examples("gsm8k", str(LLM_ADAPTERS))
    assert len(loaded.examples) == 1319 and loaded.examples[0]["answer"] == "576.0"
    assert resolve_names("math") == ["gsm8k", "svamp", "aqua", "addsub", "multiarith", "singleeq", "mawps"]
    assert resolve_names("all") == resolve_names("commonsense") and len(resolve_names("all")) == 9
    assert resolve_names("gsm8k,math,boolq")[:2] == ["gsm8k", "svamp"] and resolve_names("math,boolq")[-1] == "boolq"
    sizes = {name: len(load_test_examples(name, str(LLM_ADAPTERS)).examples) for name in resolve_names("math")}
    assert sizes == {"gsm8k": 1319, "svamp": 1000, "aqua": 254, "addsub": 395, "multiarith": 600, "singleeq": 508,
                     "mawps": 238}  # fmt: skip


def _gsm8k_with(root: Path, folder: str, last_answer: str, count: int = 3) -> str:
    """A data folder whose ``folder``/test.json holds GSM8K's first records, the last one's answer replaced."""
    records = json.loads((LLM_ADAPTERS / "gsm8k" / "test.json").read_text())[:count]
    records[-1]["answer"] = last_answer
    (root / folder).mkdir(exist_ok=True)
    (root / folder / "test.json").write_text(json.dumps(records))
    return str(root)


def test_a_math_answer_that_is_no_number_is_a_bad_record(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="example 2: has answer 'twelve', not a number"):
        load_test_examples("gsm8k", _gsm8k_with(tmp_path, "gsm8k", "twelve"))
    with pytest.raises(UserError, match="example 0: has answer '576.0', not a letter A-E"):
        load_test_examples("aqua", _gsm8k_with(tmp_path, "AQuA", "E"))


def test_gsm8k_in_its_own_schema() -> None:
    example = gsm8k({"question": "How many?", "answer": "He has 2 * 600 = <<2*600=1200>>1,200.\n#### 1,200"})
    assert example["answer"] == "1200" and example["instruction"] == "How many?"
    with pytest.raises(ValueError, match="no '####'"):
        gsm8k({"question": "q", "answer": "12"})


def test_convai2_from_parlai_files(tmp_path: Path) -> None:
    root = write_convai2(tmp_path, episodes=2, train_episodes=3)
    test = load_test_examples("convai2", str(root)).examples
    assert len(test) == 2 + 3  # episode 0 has 2 replies, episode 1 has 3
    first, second = test[0], test[1]
    persona = " ".join(f"your persona: {s}" for s in PERSONAS[0])
    assert first["instruction"] == f"{persona} Q: {TURNS[0][0]}"
    assert second["instruction"] == f"{persona} Q: {TURNS[0][0]} R: {TURNS[0][1]} Q: {TURNS[1][0]}"
    assert second["answer"] == second["output"] == TURNS[1][1]
    assert [e["dialogue"] for e in test] == ["0", "0", "1", "1", "1"]
    assert len(load_train_examples("convai2", str(root)).examples) == 2 + 3 + 4
    prompt = build_prompt(first, get_protocol("hira", "dialogue"))
    assert prompt == f"CONTEXT: {first['instruction']} TARGET: "


def test_a_parlai_line_without_a_reply_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "convai2"
    folder.mkdir()
    lines = parlai_episode(PERSONAS[0], TURNS[:2])
    lines[4] = "5 a turn with no reply"
    (folder / "valid_self_original.txt").write_text("\n".join(lines))
    with pytest.raises(UserError, match="line 5: has no tab-separated reply"):
        load_test_examples("convai2", str(tmp_path))


def test_task_variants_of_the_protocols() -> None:
    math, dialogue = get_protocol("hira", "math"), get_protocol("hira", "dialogue")
    assert (math.eval_prompt_max_tokens, math.answer_max_tokens, math.eval_defaults["max_new_tokens"]) == (
        155,
        200,
        200,
    )
    assert math.scorers == {"integer": "hira-number"} and math.run_defaults["max_length"] == 155
    assert dialogue.generation == {"length_penalty": 0.9, "no_repeat_ngram_size": 4}
    assert dialogue.eval_defaults == {"beam_size": 4, "max_new_tokens": 32}
    assert get_protocol("llm-adapters", "math").scorers["letter"] == "llm-adapters-letter"
    with pytest.raises(
        UserError, match="protocol 'llm-adapters' has no dialogue variant; dialogue is defined under: hira"
    ):
        get_protocol("llm-adapters", "dialogue")
    # The commonsense variants' settings and prompt versions are those every earlier result records.
    assert "task" not in HIRA.settings() and "scorers" not in HIRA.settings()
    assert prompt_version(HIRA).startswith("hira:") and prompt_version(math).startswith("hira/math:")
    assert math.settings()["task"] == "math" and get_dataset("metamath").task == "math"


@pytest.mark.parametrize("task", ["math", "dialogue"])
def test_math_and_dialogue_hold_out_validation_as_commonsense(task: str) -> None:
    data = Dataset.from_list([{"instruction": f"q{i}", "output": "o", "answer": "1"} for i in range(50)])
    protocol = get_protocol("hira", task)
    train, validation = hold_out_validation(data, 10, protocol, run_seed=1)
    same_train, same_validation = hold_out_validation(data, 10, protocol, run_seed=2)  # seed 58, whatever --seed
    assert len(train) == 40 and validation["instruction"] == same_validation["instruction"]
    with pytest.raises(UserError, match="--val_set_size 50 leaves no training data"):
        hold_out_validation(data, 50, protocol, run_seed=1)


def test_math_and_dialogue_answers_end_with_eos_unless_cut() -> None:
    tokenizer = make_tokenizer()
    long_question = "How many apples? " * 60  # far past the 155-token prompt bound
    batch = {"instruction": [long_question, "q"], "input": ["", ""], "answer": ["7", "7"],
             "output": ["So 3 + 4 = 7.\nThe answer is: 7", "step " * 400 + "The answer is: 7"]}  # fmt: skip
    math = get_protocol("hira", "math")
    columns = tokenize_batch(batch, tokenizer, math, 155, train_on_inputs=False)
    kept, cut = columns["input_ids"]
    assert kept[-1] == tokenizer.eos_token_id and len(kept) > 155  # the prompt was cut, the answer was not
    assert cut[-1] != tokenizer.eos_token_id  # the answer was cut at 200 tokens: no EOS mid-answer
    dialogue = get_protocol("hira", "dialogue")
    reply = {"instruction": ["your persona: i like cats. Q: hi"], "input": [""], "output": ["hello !"],
             "answer": ["hello !"]}  # fmt: skip
    row = tokenize_batch(reply, tokenizer, dialogue, 512, train_on_inputs=False)
    trained = [i for i, label in zip(row["input_ids"][0], row["labels"][0], strict=True) if label != -100]
    assert tokenizer.decode(trained) == "hello !" + tokenizer.eos_token  # the reply, tokenized apart, and EOS


def test_hiras_rounding_rule_scores_integer_answers_only(tmp_path: Path) -> None:
    assert [get_dataset(n).answer_kind for n in resolve_names("math")] == [
        "integer", "integer", "letter", "number", "integer", "number", "number"
    ]  # fmt: skip
    hira = get_protocol("hira", "math")
    assert hira.scorer("gsm8k", "integer") == "hira-number"
    with pytest.raises(UserError, match="addsub's answers \\(number\\) have no official scorer under protocol 'hira'; "
                                        "--protocol llm-adapters scores them"):  # fmt: skip
        hira.scorer("addsub", "number")
    with pytest.raises(UserError, match="example 1: has answer '3.5', not an integer"):
        load_test_examples("gsm8k", _gsm8k_with(tmp_path, "gsm8k", "3.5", count=2))
