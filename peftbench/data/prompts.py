"""Prompts and tokens as a protocol defines them (see ``peftbench.data.protocols``): training examples with
masked labels, evaluation prompts, and the scored answer of each option."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from peftbench.data.protocols import Protocol

IGNORE_INDEX = -100  # label value the loss skips

# The version of the prompt and tokenization code (this module and data/protocols.py). The tokenization cache and
# every result record carry it, so a change to that code never reuses stale tokens or an old result:
# tests/data/test_prompts.py fails on any change to these two files until it is judged (a new value where prompts
# or tokens can change). The value is the hash of their bytes before the layout change moved them (91ce570), kept
# so that the results and caches written before still match.
PROMPT_CODE_HASH = "270c5a5da974"


def prompt_version(protocol: Protocol) -> str:
    """'hira:<hash>' for commonsense, as results have always recorded it; 'hira/math:<hash>' for another task."""
    task = "" if protocol.task == "commonsense" else f"/{protocol.task}"
    return f"{protocol.name}{task}:{PROMPT_CODE_HASH}"


def build_prompt(example: dict[str, str], protocol: Protocol) -> str:
    """The prompt up to the response (what the model continues at evaluation)."""
    if protocol.input_template is not None and example.get("input"):
        return protocol.input_template.format(instruction=example["instruction"], input=example["input"])
    return protocol.template.format(instruction=example["instruction"])


def _ids(tokenizer: PreTrainedTokenizerBase, texts: list[str], special_tokens: bool) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]]


def _answer_ids(tokenizer: PreTrainedTokenizerBase, answers: Sequence[str], protocol: Protocol) -> list[list[int]]:
    """hira: the answer tokenized on its own (stripped, no special tokens) and cut at answer_max_tokens."""
    limit = protocol.answer_max_tokens
    return [ids[:limit] for ids in _ids(tokenizer, [a.strip() for a in answers], False)]


def tokenize_batch(
    batch: dict[str, list[Any]],
    tokenizer: PreTrainedTokenizerBase,
    protocol: Protocol,
    max_length: int,
    train_on_inputs: bool,
    answer_labels: bool = False,
) -> dict[str, list[list[int]]]:
    """Training features; labels mask the prompt unless train_on_inputs.

    Columns in, columns out, as ``datasets.map(batched=True)`` wants; the tokenizer sees whole lists, so
    a fast tokenizer works in parallel. With ``answer_max_tokens`` (hira) the prompt alone is cut at
    max_length and the answer is always appended; otherwise prompt + answer are cut together at max_length
    (an over-long prompt then leaves no label: ``data stats`` counts such examples and training drops them).
    ``answer_labels`` adds labels that keep only the answer keyword's tokens ("true" of "the correct answer
    is true"), for ``--select_checkpoint answer_loss``.
    """
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    prompts, whole_prompts, tails = _uncut(rows, tokenizer, protocol)
    prompt_ids = [ids[:max_length] for ids in whole_prompts]
    if protocol.answer_max_tokens is not None:
        sequences = [p + a[: protocol.answer_max_tokens] for p, a in zip(prompt_ids, tails, strict=True)]
    else:
        sequences = [ids[:max_length] for ids in tails]
    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    keyword_starts = _keyword_starts(tokenizer, protocol, rows, prompts, prompt_ids, sequences) if answer_labels else []
    for i, (ids, prompt, tail) in enumerate(zip(sequences, prompt_ids, tails, strict=True)):
        real_length = len(ids)  # before EOS: the answer keyword ends here
        # As LLM-Adapters: EOS only when the text fits, so a cut example does not learn to stop mid-answer. With the
        # answer cut apart (answer_max_tokens), "fits" is the answer's own bound: the prompt's does not cover it.
        fits = len(ids) < max_length if protocol.answer_max_tokens is None else len(tail) <= protocol.answer_max_tokens
        if protocol.append_eos and fits and ids[-1] != tokenizer.eos_token_id:
            ids.append(tokenizer.eos_token_id)
        masked = 0 if train_on_inputs else min(len(prompt), len(ids))
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append([IGNORE_INDEX] * masked + ids[masked:])
        if answer_labels:
            start = min(keyword_starts[i], real_length)
            keyword = ids[start:real_length]
            columns.setdefault("answer_labels", []).append(
                [IGNORE_INDEX] * start + keyword + [IGNORE_INDEX] * (len(ids) - real_length)
            )
    return columns


def _keyword_starts(
    tokenizer: PreTrainedTokenizerBase,
    protocol: Protocol,
    rows: list[dict[str, Any]],
    prompts: list[str],
    prompt_ids: list[list[int]],
    sequences: list[list[int]],
) -> list[int]:
    """Where each sequence's answer keyword starts: the length of prompt + response up to the keyword, when those
    tokens are a prefix of the sequence (else the response's start, so the whole response counts)."""
    heads = []
    for row in rows:
        response = row["output"].strip() if protocol.answer_max_tokens is not None else row["output"]
        cut = response.rfind(row["answer"])
        heads.append(response[:cut].rstrip() if cut > 0 else "")
    if protocol.answer_max_tokens is not None:
        head_ids = [p + h for p, h in zip(prompt_ids, _ids(tokenizer, heads, False), strict=True)]
    else:
        texts = [p + h for p, h in zip(prompts, heads, strict=True)]
        head_ids = _ids(tokenizer, texts, protocol.special_tokens)
    return [
        len(head) if sequence[: len(head)] == head else len(prompt)
        for head, sequence, prompt in zip(head_ids, sequences, prompt_ids, strict=True)
    ]


def _uncut(
    examples: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, protocol: Protocol
) -> tuple[list[str], list[list[int]], list[list[int]]]:
    """(prompts, prompt ids, tails) before any cut. The tail is the answer tokenized on its own (hira: stripped,
    no special tokens) when the protocol cuts the answer separately, else the whole prompt + answer sequence."""
    prompts = [build_prompt(e, protocol) for e in examples]
    prompt_ids = _ids(tokenizer, prompts, protocol.special_tokens)
    if protocol.answer_max_tokens is not None:
        return prompts, prompt_ids, _ids(tokenizer, [e["output"].strip() for e in examples], False)
    texts = [p + e["output"] for p, e in zip(prompts, examples, strict=True)]
    return prompts, prompt_ids, _ids(tokenizer, texts, protocol.special_tokens)


def token_lengths(
    examples: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase, protocol: Protocol
) -> list[tuple[int, int]]:
    """(prompt tokens, answer tokens) of each example before any cut, tokenized as ``tokenize_batch`` does."""
    _, prompt_ids, tails = _uncut(examples, tokenizer, protocol)
    joint = protocol.answer_max_tokens is None  # the tail holds the prompt too
    return [(len(p), len(t) - len(p) * joint) for p, t in zip(prompt_ids, tails, strict=True)]


def truncation(prompt_tokens: int, answer_tokens: int, protocol: Protocol, max_length: int) -> tuple[bool, bool]:
    """(the example loses tokens, it loses its whole answer) under ``tokenize_batch``'s cut."""
    if protocol.answer_max_tokens is not None:  # the prompt alone is cut; the answer is cut at its own limit
        return prompt_tokens > max_length or answer_tokens > protocol.answer_max_tokens, answer_tokens == 0
    eos = int(protocol.append_eos)  # an EOS that no longer fits is lost too
    return prompt_tokens + answer_tokens + eos > max_length, prompt_tokens >= max_length


def eval_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], protocol: Protocol) -> list[list[int]]:
    """What the model sees at evaluation: [BOS] + prompt tokens, cut at eval_prompt_max_tokens (hira: 256)."""
    limit = protocol.eval_prompt_max_tokens
    return [
        (_bos(tokenizer, protocol) + ids)[:limit] for ids in _ids(tokenizer, list(prompts), protocol.special_tokens)
    ]


def _bos(tokenizer: PreTrainedTokenizerBase, protocol: Protocol) -> list[int]:
    """hira's f'{bos_token}{prompt}'; a tokenizer without a BOS token gets none."""
    return [tokenizer.bos_token_id] if protocol.eval_bos and tokenizer.bos_token_id is not None else []


def scored_sequences(
    tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_ids: list[int], responses: Sequence[str], protocol: Protocol
) -> list[list[int]]:
    """Prompt + each response, tokenized as training tokenizes prompt + answer (log-likelihood scores the
    tokens after ``prompt_ids``)."""
    if protocol.answer_max_tokens is not None:
        return [prompt_ids + ids for ids in _answer_ids(tokenizer, responses, protocol)]
    texts = [prompt + response for response in responses]
    return [_bos(tokenizer, protocol) + ids for ids in _ids(tokenizer, texts, protocol.special_tokens)]
