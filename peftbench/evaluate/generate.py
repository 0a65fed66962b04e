"""Beam-search generation over batches of prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.inference_mode()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batch_size: int,
    beam_size: int,
    max_new_tokens: int,
) -> list[str]:
    """The text each prompt's continuation decodes to, in prompt order.

    Prompts are batched in order of length (less padding) with left padding, so every prompt's
    last token sits at the end of the row and the attention mask hides the padding: the result
    does not depend on the batch size.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses: list[str] = [""] * len(prompts)
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch"):
            indices = order[start : start + batch_size]
            encoded = tokenizer([prompts[i] for i in indices], return_tensors="pt", padding=True).to(model.device)
            output = model.generate(
                **encoded,
                num_beams=beam_size,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for index, text in zip(indices, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                responses[index] = text
    finally:
        tokenizer.padding_side = previous_side
    return responses
