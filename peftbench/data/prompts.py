"""The Alpaca-style template of LLM-Adapters and the official HiRA code, tokenization and label masking."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value the loss skips

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


def tokenize_example(
    example: dict[str, str], tokenizer: PreTrainedTokenizerBase, max_length: int, train_on_inputs: bool
) -> dict[str, list[int]]:
    """Prompt + response + EOS, cut at max_length; labels mask the prompt unless train_on_inputs.

    As in LLM-Adapters, EOS is appended only when the text fits, so a truncated example does not
    teach the model to stop mid-answer.
    """
    prompt = build_prompt(example)
    full = tokenizer(prompt + example["output"], truncation=True, max_length=max_length)
    input_ids = list(full["input_ids"])
    if len(input_ids) < max_length and input_ids[-1] != tokenizer.eos_token_id:
        input_ids.append(tokenizer.eos_token_id)
    labels = list(input_ids)
    if not train_on_inputs:
        prompt_length = len(tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"])
        labels[:prompt_length] = [IGNORE_INDEX] * prompt_length
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def tokenize_batch(
    batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase, max_length: int, train_on_inputs: bool
) -> dict[str, list[list[int]]]:
    """``datasets.map(batched=True)`` adapter around tokenize_example."""
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    encoded = [tokenize_example(row, tokenizer, max_length, train_on_inputs) for row in rows]
    return {key: [item[key] for item in encoded] for key in ("input_ids", "attention_mask", "labels")}
