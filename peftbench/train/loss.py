"""The loss on label positions, in training and validation, and what a model must do for it to be computed so.

The loss is computed from logits at the label positions only (``logits_to_keep``, where the model takes it):
the same sum over the same tokens, without a vocabulary-wide logit row, and its fp32 copy, for every
prompt token. Under ``--protocol hira`` most tokens are prompt; the rows are 50k wide for GPT-Neo.

Packed sequences (``batches.pack_step``) are trained only on a model that keeps them apart
(``keeps_packed_sequences_apart``), checked on the model itself.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner

from peftbench.data.prompts import IGNORE_INDEX


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """[batch, length] bool: the positions whose next token is a label, the only logits the loss uses."""
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions


def label_token_loss(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """transformers' causal-LM loss (fp32 token losses summed over ``num_items_in_batch``, else their mean) from
    logits computed with ``logits_to_keep=label_positions(labels)``: one row per label token, in order."""
    shifted = labels[:, 1:]
    targets = shifted[shifted != IGNORE_INDEX].to(outputs.logits.device)
    loss = F.cross_entropy(outputs.logits.float(), targets, reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else targets.numel())


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each next target token (fp32), 0 where the target is ignored: [batch, len - 1]."""
    return F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )


def label_position_nll(model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """``token_nll`` of the targets from logits computed at the target positions only (``logits_to_keep``)."""
    logits = model(**inputs, logits_to_keep=label_positions(targets)).logits
    shifted = targets[:, 1:]
    kept = shifted != IGNORE_INDEX
    nll = torch.zeros(shifted.shape, dtype=torch.float32, device=logits.device)
    nll[kept] = F.cross_entropy(logits.float(), shifted[kept], reduction="none")
    return nll


def masked_totals(nll: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[summed NLL of the tokens ``labels`` keeps, their number], in float64."""
    kept = labels[:, 1:] != IGNORE_INDEX
    return torch.stack([nll[kept].sum().double(), kept.sum().double()])


def label_loss_totals(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[summed negative log-likelihood of the label tokens, number of label tokens], in float64."""
    return masked_totals(token_nll(logits, labels), labels)


def logits_at_labels_only(model: torch.nn.Module) -> bool:
    """Whether the model can compute logits at chosen positions (transformers' ``logits_to_keep``) and the loss
    be computed from them. Not for prompt learning, whose virtual tokens shift the positions the mask would
    select, nor for a tuner with a forward of its own, which may add to the model's loss: AdaLoRA's adds its
    orthogonality penalty, and only when the model computes the loss itself."""
    if isinstance(model, PeftModel) and (
        model.active_peft_config.is_prompt_learning or type(model.base_model).forward is not BaseTuner.forward
    ):
        return False
    return _base_forward_takes(model, "logits_to_keep")


def keeps_packed_sequences_apart(model: torch.nn.Module) -> bool:
    """Whether a packed sequence computes as it does alone. transformers separates packed sequences by position
    ids that restart (its mask functions, flash-attn's varlen); a model that ignored them would let a sequence
    attend to the one before it, or give it the wrong positions, silently. Checked on the model itself:

    - a sequence's logits must not change with the sequence packed before it (rows of one batch: exact but for
      rounding in any precision);
    - in fp32, they must equal the sequence's logits alone (in bf16 a real model's logits move by a few percent
      with the shape alone, too much to tell a shift of positions from rounding).

    Prompt learning is excluded: its virtual tokens lead a row, not each sequence."""
    if isinstance(model, PeftModel) and model.active_peft_config.is_prompt_learning:
        return False
    if not _base_forward_takes(model, "position_ids"):
        return False
    packed, alone = _packed_and_alone_logits(model)
    scale = float(alone.abs().max())
    apart = torch.allclose(packed[0], packed[1], rtol=1e-3, atol=1e-3 * scale)
    if model.get_input_embeddings().weight.dtype != torch.float32:
        return apart
    return apart and torch.allclose(packed[0], alone, rtol=1e-4, atol=1e-4 * scale)


def _packed_and_alone_logits(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's fp32 logits packed after two different sequences ([2, 5, vocabulary]), and alone."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    vocabulary = model.get_input_embeddings().num_embeddings
    before = torch.randint(vocabulary, (2, 6), generator=generator)  # two different first sequences
    after = torch.randint(vocabulary, (1, 5), generator=generator)
    ids = torch.cat([before, after.expand(2, -1)], dim=1).to(device)
    positions = torch.cat([torch.arange(6), torch.arange(5)]).expand(2, -1).to(device)
    training = model.training
    model.eval()  # no dropout
    try:
        with torch.no_grad():
            # As in training: transformers reads packed positions only without a KV cache.
            packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[:, 6:].float()
            alone = model(input_ids=after.to(device), use_cache=False).logits[0].float()
    finally:
        model.train(training)
    return packed, alone


def _base_forward_takes(model: torch.nn.Module, argument: str) -> bool:
    """Whether the transformers model (under a PEFT wrapper, if any) takes ``argument`` in its forward."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return argument in inspect.signature(base.forward).parameters
