"""Protocols: the official code's prompt bytes, truncation, labels, validation split and defaults."""

from __future__ import annotations

import dataclasses

import pytest
from tiny import make_tokenizer

from peftbench.config import RunConfig
from peftbench.data.pipeline import hold_out_validation
from peftbench.data.prompts import IGNORE_INDEX, build_prompt, eval_prompt_ids, tokenize_batch
from peftbench.data.protocols import HIRA, LLM_ADAPTERS
from peftbench.data.registry import benchmark_names
from peftbench.data.sources import load_test_examples
from peftbench.train.plan import Execution, plan_execution
from peftbench.train.recipe import training_arguments

# Written out by hand from the official sources, not imported: hira's BOOLQ_TEMPLATE
# (dataset/format_inputs.py:112-118) and LLM-Adapters' generate_prompt (finetune.py:323-343).
HIRA_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n"
    "### Instruction:\n"
)
HIRA_TAIL = "\n\n### Response:\n"
PAD = "                "  # finetune.py's source indentation, part of LLM-Adapters' prompt bytes
LLM_ADAPTERS_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n"
    f"{PAD}### Instruction:\n{PAD}"
)
LLM_ADAPTERS_TAIL = f"\n{PAD}\n{PAD}### Response:\n{PAD}"

# The shortest question of each benchmark's local test set (index), verbatim.
GOLDEN_INSTRUCTIONS = {
    "boolq": (1774, "Please answer the following question with true or false, question: is nba playoffs 2-3-2?\n\n"
                    "Answer format: true/false"),
    "piqa": (1549, "Please choose the correct solution to the question: laser\n\nSolution1: burns face \n\n"
                   "Solution2: burns air \n\nAnswer format: solution1/solution2"),
    "siqa": (114, "Please choose the correct answer to the question: Riley was in pain. How would Riley feel "
                  "afterwards?\n\nAnswer1: aware Answer2: Painful Answer3: Great\n\nAnswer format: "
                  "answer1/answer2/answer3"),
    "hellaswag": (3, "Please choose the correct ending to complete the given sentence: High jump: A boy is running "
                     "down a track. the boy\n\nEnding1: runs into a car. Ending2: gets in a mat. Ending3: lifts his "
                     "body above the height of a pole. Ending4: stands on his hands and springs.\n\nAnswer format: "
                     "ending1/ending2/ending3/ending4"),
    "winogrande": (81, "Please choose the correct answer to fill in the blank to complete the given sentence: God "
                       "liked to control the day and the night, but the _ was too bright.\n\nOption1: day Option2: "
                       "night Answer format: option1/option2"),
    "arc_easy": (29, "Please choose the correct answer to the question: What causes sound?\n\nAnswer1: sunlight "
                     "Answer2: vibrations Answer3: x-rays Answer4: pitch\n\nAnswer format: "
                     "answer1/answer2/answer3/answer4"),
    "arc_challenge": (553, "Please choose the correct answer to the question: Planets orbit\n\nAnswer1: Earth. "
                           "Answer2: the Moon. Answer3: the galaxy. Answer4: the Sun.\n\nAnswer format: "
                           "answer1/answer2/answer3/answer4"),
    "obqa": (2, "Please choose the correct answer to the question: Predators eat\n\nAnswer1: lions Answer2: humans "
                "Answer3: bunnies Answer4: grass\n\nAnswer format: answer1/answer2/answer3/answer4"),
    "csqa": (605, "Please choose the correct answer to the question: What blocks sunshine?\n\nAnswer1: summer "
                  "Answer2: park Answer3: desktop Answer4: sea Answer5: moon\n\nAnswer format: "
                  "answer1/answer2/answer3/answer4/answer5"),
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _features(example: dict, tokenizer, protocol, max_length: int = 256, train_on_inputs: bool = False) -> dict:
    columns = tokenize_batch({k: [v] for k, v in example.items()}, tokenizer, protocol, max_length, train_on_inputs)
    return {key: values[0] for key, values in columns.items()}


@pytest.mark.parametrize("dataset", benchmark_names())
def test_prompt_bytes_of_each_benchmark_under_each_protocol(dataset: str, data_dir: str) -> None:
    assert len(GOLDEN_INSTRUCTIONS) == 9
    index, instruction = GOLDEN_INSTRUCTIONS[dataset]
    example = load_test_examples(dataset, data_dir).examples[index]
    assert build_prompt(example, HIRA) == HIRA_HEAD + instruction + HIRA_TAIL
    assert build_prompt(example, LLM_ADAPTERS) == LLM_ADAPTERS_HEAD + instruction + LLM_ADAPTERS_TAIL


def test_llm_adapters_uses_the_input_field_and_hira_does_not() -> None:
    example = {"instruction": "Q?", "input": "context", "output": "o", "answer": "a"}
    assert "context" not in build_prompt(example, HIRA)  # dataset_hg.py:69 reads the instruction only
    assert build_prompt(example, LLM_ADAPTERS) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
        f"response that appropriately completes the request. \n\n{PAD}### Instruction:\n{PAD}Q?\n{PAD}\n{PAD}"
        f"### Input:\n{PAD}context\n{PAD}\n{PAD}### Response:\n{PAD}"
    )


LONG = {"instruction": "word " * 400, "input": "", "output": " the correct answer is true ", "answer": "true"}


def test_hira_always_trains_the_answer_of_an_over_long_prompt(tokenizer) -> None:
    encoded = _features(LONG, tokenizer, HIRA, max_length=256)
    answer = tokenizer("the correct answer is true", add_special_tokens=False)["input_ids"]  # stripped, as official
    assert (
        encoded["input_ids"][:256] == tokenizer(build_prompt(LONG, HIRA), add_special_tokens=False)["input_ids"][:256]
    )
    assert encoded["input_ids"][256:] == answer  # no EOS
    assert encoded["labels"] == [IGNORE_INDEX] * 256 + answer


def test_hira_cuts_the_answer_at_16_tokens(tokenizer) -> None:
    example = {**LONG, "instruction": "Q?", "output": "answer " * 40}
    encoded = _features(example, tokenizer, HIRA)
    assert len([label for label in encoded["labels"] if label != IGNORE_INDEX]) == 16


def test_llm_adapters_cuts_the_whole_sequence_so_the_answer_can_be_lost(tokenizer) -> None:
    from peftbench.data.prompts import token_lengths
    from peftbench.data.tools import truncation_counts

    masked = _features(LONG, tokenizer, LLM_ADAPTERS, max_length=256)
    assert len(masked["input_ids"]) == 256 and all(label == IGNORE_INDEX for label in masked["labels"])
    assert _features(LONG, tokenizer, LLM_ADAPTERS, train_on_inputs=True)["labels"] == masked["input_ids"]
    short = {**LONG, "instruction": "Q?"}
    fits = _features(short, tokenizer, LLM_ADAPTERS, train_on_inputs=True)
    assert fits["input_ids"][-1] == tokenizer.eos_token_id and fits["labels"] == fits["input_ids"]
    # Counted, per protocol: (cut, answer lost).
    for protocol, counts in ((LLM_ADAPTERS, (1, 1)), (HIRA, (1, 0))):
        assert truncation_counts(token_lengths([LONG, short], tokenizer, protocol), protocol, 256) == counts


def test_hira_evaluates_bos_plus_the_prompt_cut_at_256(tokenizer) -> None:
    (ids,) = eval_prompt_ids(tokenizer, [build_prompt(LONG, HIRA)], HIRA)
    assert len(ids) == 256 and ids[0] == tokenizer.bos_token_id
    assert ids[1:] == tokenizer(build_prompt(LONG, HIRA), add_special_tokens=False)["input_ids"][:255]
    (short,) = eval_prompt_ids(tokenizer, ["Q?"], LLM_ADAPTERS)
    assert short == tokenizer("Q?")["input_ids"]  # no BOS, no cut


def test_hira_validation_set_is_the_same_for_every_seed() -> None:
    from datasets import Dataset

    data = Dataset.from_list([{"i": i} for i in range(1000)])
    _, seed_36 = hold_out_validation(data, 120, HIRA, run_seed=36)
    train, seed_37 = hold_out_validation(data, 120, HIRA, run_seed=37)
    import random

    order = list(range(1000))
    random.seed(58)  # do_train_val_test_split.py: random.seed(58); random.shuffle(json_data); [-120:]
    random.shuffle(order)
    assert seed_36["i"] == seed_37["i"] == order[-120:]
    assert len(train) == 880 and not set(train["i"]) & set(seed_36["i"])
    _, other = hold_out_validation(data, 120, dataclasses.replace(HIRA, validation_seed=None), run_seed=37)
    assert other["i"] != seed_36["i"]


def _literal(config: RunConfig) -> Execution:
    return plan_execution("spec", config.batch, config.grad_acc, config.enable_grad_ckpt, fits=None)


def test_protocol_defaults_reach_the_trainer_and_flags_override_them() -> None:
    hira = RunConfig(peft_type="lora", model_name="m")
    args = training_arguments(hira, _literal(hira), bf16=False, fp16=False, evaluate=True)
    assert (args.weight_decay, args.warmup_steps, args.eval_strategy, args.save_total_limit) == (0.01, 10, "epoch", 1)
    assert (hira.lr, hira.batch, hira.r_ab, hira.train_on_inputs) == (1e-5, 32, 16, False)
    adapters = RunConfig(peft_type="lora", model_name="m", protocol="llm-adapters")
    args = training_arguments(adapters, _literal(adapters), bf16=False, fp16=False, evaluate=True)
    assert (args.weight_decay, args.warmup_steps, args.eval_strategy, args.eval_steps) == (0.0, 100, "steps", 200)
    assert (adapters.lr, adapters.batch, adapters.grad_acc, adapters.train_on_inputs) == (3e-4, 4, 32, True)
    mixed = RunConfig(peft_type="lora", model_name="m", protocol="llm-adapters", warmup=7, train_on_inputs=False)
    assert (mixed.warmup, mixed.train_on_inputs, mixed.lr) == (7, False, 3e-4)


def test_flags_override_the_protocol_on_the_command_line() -> None:
    from peftbench.cli.app import build_parser
    from peftbench.cli.flags import build_config

    args = build_parser().parse_args(["train", "--protocol", "llm-adapters", "--no-train_on_inputs", "--warmup", "3"])
    config = build_config(RunConfig, args)
    assert (config.protocol, config.train_on_inputs, config.warmup, config.weight_decay) == (
        "llm-adapters", False, 3, 0.0
    )  # fmt: skip


def test_answer_labels_keep_only_the_answer_keyword(tokenizer) -> None:
    example = {"instruction": "Q?", "input": "", "output": "the correct answer is true", "answer": "true"}
    for protocol in (HIRA, LLM_ADAPTERS):
        columns = tokenize_batch({k: [v] for k, v in example.items()}, tokenizer, protocol, 256, True, True)
        kept = [t for t in columns["answer_labels"][0] if t != IGNORE_INDEX]
        assert tokenizer.decode(kept).strip() == "true", protocol.name
        assert len(columns["answer_labels"][0]) == len(columns["input_ids"][0])


@pytest.mark.parametrize("rule", ["accuracy", "answer_loss", "last"])
def test_select_checkpoint_chooses_by_its_metric(rule: str, tiny_neo, data_dir, tmp_path, monkeypatch) -> None:
    from peftbench.runs.records import read_records
    from peftbench.train.recipe import train

    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    config = RunConfig(
        peft_type="lora", model_name=str(tiny_neo), dataset="boolq", r_ab=4, batch=4, lr=2e-2, max_steps=6,
        eval_strategy="steps", eval_steps=2, val_set_size=8, max_train_samples=48, save_total_limit=0,
        select_checkpoint=rule, data_dir=data_dir, output_folder=str(tmp_path / "results"),
    )  # fmt: skip
    result = train(config)
    state_entries = [e for e in read_records(result.run_dir / "output.jsonl") if e.get("event") == "train_end"]
    import json

    history = json.loads((result.run_dir / "trainer_state.json").read_text())["log_history"]
    evaluations = [e for e in history if "eval_loss" in e]
    assert len(evaluations) == 3 and all(0 < e["eval_answer_loss"] < e["eval_loss"] * 10 for e in evaluations)
    chosen = int(result.checkpoint.name.split("-")[1])
    if rule == "last":
        assert chosen == 6 and state_entries[-1]["checkpoint_selection"] == "last (--select_checkpoint last)"
        return
    values = [e[f"eval_{rule}"] for e in evaluations]
    best = values.index(max(values) if rule == "accuracy" else min(values))
    assert chosen == evaluations[best]["step"] and state_entries[-1]["selection_metric"] == f"eval_{rule}"
    if rule == "accuracy":
        assert all(v in {i / 8 for i in range(9)} for v in values)  # a fraction of the 8 validation examples


def test_training_pads_at_the_end_whatever_the_tokenizer_says(tmp_path) -> None:
    """Not replicated: the official left padding without position ids (README, 'Not replicated')."""
    from peftbench.models.load import load_tokenizer

    saved = make_tokenizer()
    saved.padding_side = "left"
    saved.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).padding_side == "right"


@pytest.mark.parametrize("protocol", [HIRA, LLM_ADAPTERS], ids=lambda p: p.name)
def test_truncation_counts_agree_with_the_training_features(protocol, tokenizer, data_dir) -> None:
    from peftbench.data.prompts import token_lengths
    from peftbench.data.tools import truncation_counts

    examples = load_test_examples("hellaswag", data_dir).examples + load_test_examples("boolq", data_dir).examples[:50]
    columns = {key: [e[key] for e in examples] for key in ("instruction", "input", "output")}
    cut = tokenize_batch(columns, tokenizer, protocol, 200, train_on_inputs=False)
    uncut = dataclasses.replace(protocol, answer_max_tokens=protocol.answer_max_tokens and 10**6)
    whole = tokenize_batch(columns, tokenizer, uncut, 10**6, train_on_inputs=False)
    differs = sum(a != b for a, b in zip(cut["input_ids"], whole["input_ids"], strict=True))
    no_label = sum(all(label == IGNORE_INDEX for label in labels) for labels in cut["labels"])
    assert truncation_counts(token_lengths(examples, tokenizer, protocol), protocol, 200) == (differs, no_label)
    assert differs > 50 and (no_label == 0) == (protocol is HIRA)
