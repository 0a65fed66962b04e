"""The Alpaca-style template of LLM-Adapters and the official HiRA code, tokenization and label masking."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value the loss skips
TEMPLATE_VERSION = "alpaca-llm-adapters-1"  # part of the tokenization cache key: change it with the template

_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def build_prompt(example: dict[str, str]) -> str:
    """The prompt up to and including '### Response:\\n' (what the model sees at evaluation)."""
    template = _WITH_INPUT if example.get("input") else _WITHOUT_INPUT
    return template.format(instruction=example["instruction"], input=example.get("input", ""))


def tokenize_batch(
    batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, max_length: int, train_on_inputs: bool
) -> dict[str, list[list[int]]]:
    """Prompt + response + EOS, cut at max_length; labels mask the prompt unless train_on_inputs.

    Columns in, columns out, as ``datasets.map(batched=True)`` wants; the tokenizer sees whole lists, so
    a fast tokenizer works in parallel. As in LLM-Adapters, EOS is appended only when the text fits, so a
    truncated example does not teach the model to stop mid-answer.
    """
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    prompts = [build_prompt(row) for row in rows]
    full = tokenizer([p + row["output"] for p, row in zip(prompts, rows, strict=True)], truncation=True,
                     max_length=max_length)["input_ids"]  # fmt: skip
    prompt_lengths = [0] * len(rows)
    if not train_on_inputs:
        prompt_ids = tokenizer(prompts, truncation=True, max_length=max_length)["input_ids"]
        prompt_lengths = [len(ids) for ids in prompt_ids]
    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, prompt_length in zip(full, prompt_lengths, strict=True):
        ids = list(ids)
        if len(ids) < max_length and ids[-1] != tokenizer.eos_token_id:
            ids.append(tokenizer.eos_token_id)
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append([IGNORE_INDEX] * prompt_length + ids[prompt_length:])
    return columns
