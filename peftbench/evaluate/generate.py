"""Beam-search generation over batches of prompts.

Two things make it fast on any device:
- prompts are batched in order of length, so batches carry little padding;
- each prompt is encoded once. transformers' beam search repeats every prompt ``num_beams`` times
  before its first forward pass, so at beam 4 the prompt is encoded four times: on SmolLM2-135M
  (CPU, 168-token ARC prompts, 16 new tokens) that prefill was 77% of generation time. We run the
  prompt (all but its last token) once, repeat its KV cache across beams, and let ``generate`` continue
  (prefix and prompt tuning, whose virtual tokens PEFT's ``generate`` inserts, go one prompt at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from peftbench.evaluate.batching import FittedBatches
from peftbench.evaluate.loglik import inserts_virtual_tokens


def _shared_prefill(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, beams: int) -> object:
    """The KV cache of every prompt but its last token, computed once and repeated for each beam."""
    # The same positions generate() derives for left-padded prompts.
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    # use_cache explicitly: a fully fine-tuned checkpoint keeps the use_cache=False its training set.
    cache = model(
        input_ids=ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, :-1],
        use_cache=True,
        logits_to_keep=1,
    ).cache
    cache.batch_repeat_interleave(beams)
    return cache


@torch.inference_mode()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    batch_size: int | str,
    beam_size: int,
    max_new_tokens: int,
    shared_prefill: bool = True,
    progress: Callable[[int], None] | None = None,
    generation: Mapping[str, Any] | None = None,
) -> list[str]:
    """The text each prompt's (token ids) continuation decodes to, in prompt order.

    Left padding and the attention mask keep every prompt's tokens where they would be alone, so the
    result does not depend on the batch size (tested). ``progress`` is told each batch's prompts as it ends;
    ``generation`` holds a protocol's further ``generate`` settings (ConvAI2's length penalty and n-gram block).
    """
    if inserts_virtual_tokens(model):
        # Left padding would sit between the virtual tokens and the prompt and change the answer (tested), and the
        # prompt cannot be encoded apart from them: one prompt at a time, transformers' own beam search.
        batch_size, shared_prefill = 1, False
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))

    def generate_batch(indices: list[int]) -> list[str]:
        encoded = tokenizer.pad({"input_ids": [prompts[i] for i in indices]}, return_tensors="pt").to(model.device)
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        extra = {}
        if shared_prefill and beam_size > 1 and ids.shape[1] > 1:
            extra["cache"] = _shared_prefill(model, ids, mask, beam_size)
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=beam_size,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **dict(generation or {}),
            **extra,
        )
        if progress is not None:
            progress(len(indices))
        return tokenizer.batch_decode(output[:, ids.shape[1] :], skip_special_tokens=True)

    responses: list[str] = [""] * len(prompts)
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batches = FittedBatches(batch_size, cost=lambda i: len(prompts[i]))
        for index, text in zip(order, batches.map(generate_batch, order), strict=True):
            responses[index] = text
    finally:
        tokenizer.padding_side = previous_side
    return responses
