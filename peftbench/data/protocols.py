"""Protocols: named, complete sets of the choices that move a benchmark number, one entry each.

A protocol fixes the prompt bytes, how training examples are cut and labelled, what the model sees
at evaluation, how the validation set is held out, and the defaults of every setting the
specification leaves unset. ``hira`` is the official HiRA code (hqsiswiliam/hira, commit f75f0cf);
``llm-adapters`` is LLM-Adapters' ``finetune.py`` (AGI-Edgerunners/LLM-Adapters). Every line below
names the official line it follows; where the official behaviour is a defect we keep the correct
behaviour and say so in ``NOT_REPLICATED`` (and in the README).

Any single flag still overrides its protocol's default: a protocol only fills what is left unset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from peftbench.errors import UserError

# dataset/format_inputs.py, BOOLQ_TEMPLATE (template_type 4): two spaces after "request.", input field unused.
HIRA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  "
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
# finetune.py, generate_prompt: the bytes as written there, 16 spaces of source indentation included.
_INDENT = " " * 16
LLM_ADAPTERS_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  "
    f"\n\n{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n{_INDENT}\n{_INDENT}### Response:\n{_INDENT}"
)
LLM_ADAPTERS_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    f"response that appropriately completes the request. \n\n{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n"
    f"{_INDENT}\n{_INDENT}### Input:\n{_INDENT}{{input}}\n{_INDENT}\n{_INDENT}### Response:\n{_INDENT}"
)

VALIDATION_RULES = ("shuffle-tail", "train-test-split")


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    template: str  # the prompt up to the response, with {instruction}
    input_template: str | None  # used when an example has an input; None: the input field is not used
    # Training examples. answer_max_tokens set: the prompt alone is cut at --max_length and the answer (cut at
    # this many tokens) is always appended, so it is always trained. None: prompt + answer cut together.
    answer_max_tokens: int | None
    append_eos: bool  # EOS after the answer (when the sequence fits)
    special_tokens: bool  # the tokenizer's own special tokens (add_special_tokens) on the prompt
    # Evaluation: BOS before the prompt; the prompt (BOS included) cut at this many tokens (None: never cut).
    eval_bos: bool
    eval_prompt_max_tokens: int | None
    # Validation: shuffle-tail = random.Random(seed).shuffle, last N (the same for every --seed);
    # train-test-split = datasets' train_test_split(test_size=N, seed). seed None: the run's --seed.
    validation_rule: str
    validation_seed: int | None
    run_defaults: dict[str, Any] = field(default_factory=dict)  # RunConfig fields left unset
    eval_defaults: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields left unset
    sources: dict[str, str] = field(default_factory=dict)  # setting -> the official line it follows

    def settings(self) -> dict[str, Any]:
        """Everything this protocol decides, for output.jsonl and every evaluation record."""
        return {k: v for k, v in asdict(self).items() if k not in ("summary", "sources")}


HIRA = Protocol(
    name="hira",
    summary="the official HiRA code: train_hira.py and dataset/format_inputs.py of hqsiswiliam/hira",
    template=HIRA_TEMPLATE,
    input_template=None,
    answer_max_tokens=16,
    append_eos=False,
    special_tokens=False,
    eval_bos=True,
    eval_prompt_max_tokens=256,
    validation_rule="shuffle-tail",
    validation_seed=58,
    run_defaults={
        "warmup": 10,
        "weight_decay": 0.01,
        "eval_strategy": "epoch",
        "save_total_limit": 1,
        "lr": 1e-5,
        "batch": 32,
        "grad_acc": 1,
        "r_ab": 16,
        "train_on_inputs": False,
    },  # fmt: skip
    eval_defaults={"beam_size": 4, "max_new_tokens": 16},
    sources={
        "template": "dataset/format_inputs.py:112-118 (BOOLQ_TEMPLATE); train_hira.py:229-231 (template_type 4)",
        "input_template": "dataset/dataset_hg.py:69 (input_x = instruction only)",
        "answer_max_tokens": "format_inputs.py:194-197 (prompt: max_length 256, truncation; target: 16 tokens)",
        "train_on_inputs": "format_inputs.py:199-201 (prompt labels = pad -> -100)",
        "append_eos": "format_inputs.py:189-201 (the commonsense branch appends no EOS)",
        "special_tokens": "format_inputs.py:194-195 (add_special_tokens=False)",
        "eval_bos": "format_inputs.py:180-186 (f'{bos_token}{prompt}', truncation at 256)",
        "eval_prompt_max_tokens": "format_inputs.py:183-186; token_length_map (256)",
        "validation_rule": "data_file/llm_adapt/commonsense_170k/do_train_val_test_split.py:3-13 (seed 58, last 120)",
        "warmup": "train_hira.py:31",
        "weight_decay": "train_hira.py:32",
        "eval_strategy": "train_hira.py:50",
        "save_total_limit": "train_hira.py:65",
        "lr": "train_hira.py:34",
        "batch": "train_hira.py:28",
        "grad_acc": "train_hira.py:29",
        "r_ab": "train_hira.py:48",
        "beam_size": "train_hira.py:405-407 (beam 4 unless --beam_size)",
        "max_new_tokens": "format_inputs.py:37-51 (gen_max_new_token_map: 16)",
        "decoding": "train_hira.py:61, 317-323 (--do_sample 'false': deterministic beam search)",
    },  # fmt: skip
)

LLM_ADAPTERS = Protocol(
    name="llm-adapters",
    summary="LLM-Adapters' finetune.py (AGI-Edgerunners/LLM-Adapters), as used for Commonsense-170K",
    template=LLM_ADAPTERS_TEMPLATE,
    input_template=LLM_ADAPTERS_INPUT_TEMPLATE,
    answer_max_tokens=None,
    append_eos=True,
    special_tokens=True,
    eval_bos=False,
    eval_prompt_max_tokens=None,
    validation_rule="train-test-split",
    validation_seed=42,
    run_defaults={
        "warmup": 100,
        "weight_decay": 0.0,
        "eval_strategy": "steps",
        "eval_steps": 200,
        "save_total_limit": 3,
        "lr": 3e-4,
        "batch": 4,
        "grad_acc": 32,
        "epoch": 3.0,
        "r_ab": 8,
        "train_on_inputs": True,
    },  # fmt: skip
    eval_defaults={"beam_size": 4, "max_new_tokens": 32},
    sources={
        "template": "finetune.py:323-343 (generate_prompt)",
        "answer_max_tokens": "finetune.py:155-164 (prompt + output cut together at cutoff_len 256)",
        "append_eos": "finetune.py:165-172 (EOS when it fits)",
        "train_on_inputs": "finetune.py:62",
        "validation_rule": "finetune.py:254-257 (train_test_split, seed 42)",
        "warmup": "finetune.py:279",
        "save_total_limit": "finetune.py:290",
        "lr": "finetune.py:40",
        "batch": "finetune.py:38 (micro_batch_size)",
        "grad_acc": "finetune.py:37-38 (128 / 4)",
        "epoch": "finetune.py:39",
        "eval_steps": "finetune.py:44",
        "r_ab": "finetune.py:47",
        "beam_size": "commonsense_evaluate.py:43",
        "max_new_tokens": "commonsense_evaluate.py:44",
    },  # fmt: skip
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (HIRA, LLM_ADAPTERS)}
DEFAULT_PROTOCOL = HIRA.name

# Official behaviour that is a defect, not a choice: the correct behaviour is kept (README, "Not replicated").
NOT_REPLICATED: tuple[tuple[str, str, str], ...] = (
    (
        "Left-padded training without position ids",
        "hira: format_inputs.py:194 pads every prompt on the left to 256 tokens and passes no position_ids, so "
        "GPT-Neo's learned absolute positions of the real tokens shift with the prompt's length in training",
        "no padding inside an example and positions from 0, as at evaluation (generate derives positions from "
        "the attention mask); padding only at the end of a batch",
    ),
    (
        "Full fine-tuning in pure bf16",
        "hira: models/get_models.py:26-35 loads the model in bf16 and trains it so (weights and AdamW state)",
        "fp32 master weights and optimizer state with bf16 autocast: an update of lr 1e-5 rounds to nothing next "
        "to a bf16 weight of 0.02",
    ),
    (
        "A different prompt at evaluation than in training",
        "llm-adapters: commonsense_evaluate.py:121-140 drops the second space after 'request.' and the "
        "indentation of blank lines that finetune.py:323-343 trains with",
        "the training template at evaluation too",
    ),
    (
        "An unseeded training shuffle",
        "llm-adapters: finetune.py:259 (train_val['train'].shuffle() without a seed)",
        "the Trainer's seeded order (--seed)",
    ),
)


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UserError(f"unknown --protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None
