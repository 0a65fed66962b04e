"""How a training step is executed: micro-batch size, gradient checkpointing, padding.

The specification fixes what a step computes: ``--batch × --grad_acc × processes`` sequences, in the order
the seeded sampler draws them. How those sequences pass through the model is ours to choose, because the
step's gradient does not depend on it:

- the Trainer divides the step's summed token loss by the step's label-token count (``num_items_in_batch``),
  so a step split into 4 micro-batches of 8 or 1 of 32 has the same gradient, up to float rounding;
- the sampler's permutation depends on the seed and the data, not on the micro-batch, and a step is
  ``grad_acc`` consecutive micro-batches of it, so step k holds the same examples whatever divides it;
- inside a step the examples are regrouped by length (same number of micro-batches, same sizes), so each
  micro-batch pads only to its own longest sequence.

The loss is computed from logits at the label positions only (``logits_to_keep``, where the model takes it):
the same sum over the same tokens, without a vocabulary-wide logit row, and its fp32 copy, for every
prompt token. Under ``--protocol hira`` most tokens are prompt; the rows are 50k wide for GPT-Neo.

Dropout is the one exception: different micro-batches draw different masks from the same distribution.
``--micro_batch spec`` executes the flags literally; ``tests/test_execution.py`` checks that a step is the
same at 8 × 4, 32 × 1 and 8 × 4 regrouped.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner

from peftbench.data.prompts import IGNORE_INDEX
from peftbench.errors import UserError

logger = logging.getLogger(__name__)

MICRO_BATCH_MODES = ("auto", "spec")  # or a number of sequences
# Share of the GPU's memory a probed micro-batch may reach, the rest left to fragmentation and longer steps.
MEMORY_HEADROOM = 0.9

Fits = Callable[[int, bool], bool]  # (micro-batch, checkpointing) -> does a step of it fit in memory?


@dataclass(frozen=True)
class Execution:
    """What runs per device: ``micro_batch × grad_acc`` is always the flags' ``batch × grad_acc``."""

    micro_batch: int
    grad_acc: int
    checkpointing: bool
    group_by_length: bool
    why: str

    def record(self) -> dict[str, Any]:
        return asdict(self)


def check_micro_batch(setting: str, batch: int, grad_acc: int) -> None:
    """One clear error for a --micro_batch that is neither a mode nor a divisor of the step's sequences."""
    if setting in MICRO_BATCH_MODES:
        return
    per_step = batch * grad_acc
    if not setting.isdigit() or int(setting) <= 0:
        raise UserError(f"--micro_batch must be auto, spec or a positive number of sequences, got {setting!r}")
    if per_step % int(setting):
        raise UserError(
            f"--micro_batch {setting} does not divide the {per_step} sequences of a step (--batch {batch} × "
            f"--grad_acc {grad_acc}); the step's examples must stay the same"
        )


def plan_execution(setting: str, batch: int, grad_acc: int, checkpointing: bool, fits: Fits | None) -> Execution:
    """The execution of one step of ``batch × grad_acc`` sequences per device.

    ``spec``: the flags literally. A number: that micro-batch. ``auto``: with a memory probe (``fits``, on a
    GPU), the largest micro-batch that fits without checkpointing if it is at least ``--batch``, else the
    largest that fits with it; without a probe, ``--batch``. ``--enable_grad_ckpt`` is a request for memory:
    ``auto`` drops it when the memory does not need it.
    """
    check_micro_batch(setting, batch, grad_acc)
    per_step = batch * grad_acc
    if setting == "spec":
        return Execution(batch, grad_acc, checkpointing, False, "--micro_batch spec: the flags as given")
    if setting != "auto":
        size = int(setting)
        return Execution(size, per_step // size, checkpointing, True, f"--micro_batch {size}")
    if fits is None:
        why = "auto without a memory probe (no GPU, or DeepSpeed): --batch, regrouped by length in each step"
        return Execution(batch, grad_acc, checkpointing, True, why)
    sizes = [size for size in range(per_step, 0, -1) if per_step % size == 0]  # divisors, largest first
    plain = _largest_fitting([s for s in sizes if s >= batch], lambda size: fits(size, False))
    if plain is not None:
        return Execution(
            plain, per_step // plain, False, True, "auto: largest micro-batch that fits without checkpointing"
        )
    checkpointed = _largest_fitting(sizes, lambda size: fits(size, True))
    if checkpointed is not None:
        why = "auto: --batch needs gradient checkpointing; largest micro-batch that fits with it"
        return Execution(checkpointed, per_step // checkpointed, True, True, why)
    logger.warning("no micro-batch of this step fits the probed memory; running the flags as given")
    return Execution(batch, grad_acc, checkpointing, True, "auto: nothing fits the probe; the flags as given")


def _largest_fitting(sizes: list[int], fits: Callable[[int], bool]) -> int | None:
    """Binary search over sizes (largest first) for the largest that fits; memory grows with the size."""
    low, high, best = 0, len(sizes) - 1, None
    while low <= high:
        middle = (low + high) // 2
        if fits(sizes[middle]):
            best, high = sizes[middle], middle - 1
        else:
            low = middle + 1
    return best


def cuda_memory_probe(
    model: torch.nn.Module, sequence_length: int, reserved_bytes: int, autocast: torch.dtype | None
) -> Fits:
    """Tries one forward and backward of ``micro_batch`` sequences of the full training length on the GPU.

    ``reserved_bytes``: memory the probe cannot see, allocated only at the first optimizer step (AdamW's two
    moments of the trainable parameters). Random-number state is restored, so a probed run draws the same
    dropout masks as an unprobed one; the weights are untouched (no optimizer step, gradients cleared).
    """
    device = next(model.parameters()).device
    budget = MEMORY_HEADROOM * torch.cuda.get_device_properties(device).total_memory - reserved_bytes
    vocabulary = model.get_input_embeddings().num_embeddings

    def fits(micro_batch: int, checkpointing: bool) -> bool:
        _set_checkpointing(model, checkpointing)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            with torch.random.fork_rng(devices=[device]):
                ids = torch.randint(vocabulary, (micro_batch, sequence_length), device=device)
                with torch.autocast("cuda", dtype=autocast or torch.float32, enabled=autocast is not None):
                    # Every token a label: the most logits a step can need (llm-adapters trains on the prompt too).
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
            peak = torch.cuda.max_memory_allocated(device)
        except torch.cuda.OutOfMemoryError:
            peak = None
        finally:
            model.zero_grad(set_to_none=True)
            _set_checkpointing(model, False)
            torch.cuda.empty_cache()
        result = peak is not None and peak <= budget
        logger.info("memory probe: micro-batch %d, checkpointing %s: %s", micro_batch, checkpointing,
                    f"peak {peak / 2**30:.1f} GiB" if peak is not None else "out of memory")  # fmt: skip
        return result

    return fits


def _set_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    if enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


# The value each padded training column takes where a sequence has ended.
PAD_VALUES = {"attention_mask": 0, "labels": IGNORE_INDEX}


def regroup_by_length(
    batches: list[dict[str, torch.Tensor]], pad_token_id: int, multiple: int = 8
) -> list[dict[str, torch.Tensor]]:
    """The step's sequences in the same number of micro-batches of the same sizes, longest first, each padded
    to its own longest (rounded up to ``multiple``). The set of sequences and their tokens are unchanged."""
    unknown = set(batches[0]) - {"input_ids", *PAD_VALUES}
    if unknown:
        raise ValueError(f"cannot regroup training batches holding {sorted(unknown)}")
    rows = []
    for batch in batches:
        for index, kept in enumerate(batch["attention_mask"].bool()):
            rows.append({key: values[index][kept] for key, values in batch.items()})
    rows.sort(key=lambda row: len(row["input_ids"]), reverse=True)
    grouped, start = [], 0
    for batch in batches:
        size = len(batch["input_ids"])
        grouped.append(_pad_rows(rows[start : start + size], pad_token_id, multiple))
        start += size
    return grouped


def _pad_rows(rows: list[dict[str, torch.Tensor]], pad_token_id: int, multiple: int) -> dict[str, torch.Tensor]:
    width = -(-len(rows[0]["input_ids"]) // multiple) * multiple
    padded = {}
    for key in rows[0]:
        value = PAD_VALUES.get(key, pad_token_id)
        padded[key] = torch.stack(
            [torch.nn.functional.pad(row[key], (0, width - len(row[key])), value=value) for row in rows]
        )
    return padded


def padded_tokens(batches: list[dict[str, torch.Tensor]]) -> tuple[int, int]:
    """(real tokens, executed tokens) of a step's micro-batches."""
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    return real, sum(batch["input_ids"].numel() for batch in batches)


def logits_at_labels_only(model: torch.nn.Module) -> bool:
    """Whether the model can compute logits at chosen positions (transformers' ``logits_to_keep``) and the loss
    be computed from them. Not for prompt learning, whose virtual tokens shift the positions the mask would
    select, nor for a tuner with a forward of its own, which may add to the model's loss: AdaLoRA's adds its
    orthogonality penalty, and only when the model computes the loss itself."""
    if isinstance(model, PeftModel):
        if model.active_peft_config.is_prompt_learning or type(model.base_model).forward is not BaseTuner.forward:
            return False
        model = model.get_base_model()
    return "logits_to_keep" in inspect.signature(model.forward).parameters


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
