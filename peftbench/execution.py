"""How a training step is executed: micro-batch size, gradient checkpointing, padding.

The specification fixes what a step computes: ``--batch × --grad_acc × processes`` sequences, in the order
the seeded sampler draws them. How those sequences pass through the model is ours to choose, because the
step's gradient does not depend on it:

- the Trainer divides the step's summed token loss by the step's label-token count (``num_items_in_batch``),
  so a step split into 4 micro-batches of 8 or 1 of 32 has the same gradient, up to float rounding;
- the sampler's permutation depends on the seed and the data, not on the micro-batch, and a step is
  ``grad_acc`` consecutive micro-batches of it, so step k holds the same examples whatever divides it;
- inside a step the examples are regrouped by length (same number of micro-batches, same sizes), so each
  micro-batch pads only to its own longest sequence;
- or, where the model keeps them apart (``keeps_packed_sequences_apart``), packed: the step's sequences share
  rows, each with positions from 0 and attending only to itself (transformers builds that mask from position
  ids that restart), in the same number of micro-batches. On the local commonsense mix (SmolLM2 tokenizer,
  hira prompts, 256 sequences a step) regrouping leaves 7% of the executed tokens padding at micro-batch 8,
  22% at 64 and 54% at 256; packing 1%, 3% and 8%.

The loss is computed from logits at the label positions only (``logits_to_keep``, where the model takes it):
the same sum over the same tokens, without a vocabulary-wide logit row, and its fp32 copy, for every
prompt token. Under ``--protocol hira`` most tokens are prompt; the rows are 50k wide for GPT-Neo.

Dropout is the one exception: different micro-batches draw different masks from the same distribution.
``--micro_batch spec`` executes the flags literally; ``tests/test_execution.py`` checks that a step is the
same at 8 × 4, 32 × 1, 8 × 4 regrouped and packed at 8 × 4 and 32 × 1.
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
from peftbench.device import DeviceMemory
from peftbench.errors import UserError
from peftbench.models import parameter_bytes

logger = logging.getLogger(__name__)

MICRO_BATCH_MODES = ("auto", "spec")  # or a number of sequences
# Share of the GPU's memory a probed micro-batch may reach, the rest left to fragmentation.
MEMORY_HEADROOM = 0.9
PAD_MULTIPLE = 8  # training batches are padded to a multiple of this many tokens

Fits = Callable[[int, bool], bool]  # (micro-batch, checkpointing) -> does a step of it fit in memory?


@dataclass(frozen=True)
class Execution:
    """What runs per device: ``micro_batch × grad_acc`` is always the flags' ``batch × grad_acc``."""

    micro_batch: int
    grad_acc: int
    checkpointing: bool
    group_by_length: bool
    why: str
    packing: bool = False  # decided once the model is built: see keeps_packed_sequences_apart

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
        why = "auto without a memory probe (no GPU, or a sharded engine): --batch"
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


def probe_shapes(micro_batch: int, longest: int, packing: bool) -> list[tuple[int, int]]:
    """The largest micro-batches a run of sequences up to ``longest`` tokens can execute: ``micro_batch`` rows
    of the longest (rounded up as padding rounds it); packed, also half as many rows twice as long (``pack_step``
    caps a packed micro-batch at regrouping's largest, so its rows can reach twice the longest only that way)."""
    width = _round_up(longest, PAD_MULTIPLE)
    shapes = [(micro_batch, width)]
    if packing and micro_batch >= 2:
        shapes.append((micro_batch // 2, ROW_WIDTH_FACTOR * width))
    return shapes


def reserved_bytes(model: torch.nn.Module, processes: int) -> int:
    """Training memory a forward-and-backward probe does not see: AdamW's two moments (in each trainable
    parameter's dtype); the gradients, which the probe frees but a step's later micro-batches run beside; and
    under DDP its gradient buckets, a second copy of them."""
    gradients = parameter_bytes(p for p in model.parameters() if p.requires_grad)
    return 3 * gradients + (gradients if processes > 1 else 0)


def memory_probe(
    model: torch.nn.Module,
    memory: DeviceMemory,
    longest: int,
    packing: bool,
    reserved_bytes: int,
    autocast: torch.dtype | None,
) -> Fits:
    """Tries one training forward and backward of each of ``probe_shapes`` on the device.

    The model is in train mode as the Trainer will run it: transformers checkpoints a layer only in train mode,
    and dropout's masks count. ``reserved_bytes``: memory the probe cannot see, allocated only when training
    starts (AdamW's two moments, DDP's gradient buckets). Random-number state is restored, so a probed run draws
    the same dropout masks as an unprobed one; the weights are untouched (no optimizer step, gradients cleared).
    The peak statistics are the probe's afterwards: whoever records training's peak resets them first.
    """
    device = next(model.parameters()).device
    budget = MEMORY_HEADROOM * memory.total_bytes - reserved_bytes
    vocabulary = model.get_input_embeddings().num_embeddings

    sequence = _round_up(longest, PAD_MULTIPLE)

    def peak(rows: int, width: int) -> int | None:
        memory.release_cache()
        memory.reset_peak()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                ids = torch.randint(vocabulary, (rows, width), device=device)
                # A packed row's positions restart with each sequence (and absolute position tables end).
                packed = {"position_ids": (torch.arange(width, device=device) % sequence).expand(rows, -1)}
                with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                    # Every token a label: the most logits a step can need (llm-adapters trains on the prompt too).
                    loss = model(input_ids=ids, labels=ids, **(packed if width > sequence else {})).loss
                loss.backward()
            return memory.peak_bytes()
        except torch.OutOfMemoryError:
            return None
        finally:
            model.zero_grad(set_to_none=True)

    def fits(micro_batch: int, checkpointing: bool) -> bool:
        modes = {module: module.training for module in model.modules()}  # a PEFT wrapper and its model can differ
        model.train()
        _set_checkpointing(model, checkpointing)
        try:
            peaks = [peak(rows, width) for rows, width in probe_shapes(micro_batch, longest, packing)]
        finally:
            _set_checkpointing(model, False)
            for module, training in modes.items():
                module.training = training
            memory.release_cache()
        result = None not in peaks and max(peaks) <= budget
        logger.info("memory probe: micro-batch %d, checkpointing %s: %s", micro_batch, checkpointing,
                    "out of memory" if None in peaks else f"peak {max(peaks) / 2**30:.2f} GiB")  # fmt: skip
        return result

    return fits


def _set_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    if enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


# The value each padded training column takes where a sequence has ended. A padding position of a packed row
# restarts at 0, so each is a sequence of its own that no real token attends to.
PAD_VALUES = {"attention_mask": 0, "labels": IGNORE_INDEX, "position_ids": 0}


def regroup_by_length(
    batches: list[dict[str, torch.Tensor]], pad_token_id: int, multiple: int = PAD_MULTIPLE
) -> list[dict[str, torch.Tensor]]:
    """The step's sequences in the same number of micro-batches of the same sizes, longest first, each padded
    to its own longest (rounded up to ``multiple``). The set of sequences and their tokens are unchanged."""
    rows = _sequences(batches)
    grouped, start = [], 0
    for batch in batches:
        size = len(batch["input_ids"])
        grouped.append(_pad_rows(rows[start : start + size], pad_token_id, multiple))
        start += size
    return grouped


def _sequences(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The step's sequences without their padding, longest first."""
    unknown = set(batches[0]) - {"input_ids", "attention_mask", "labels"}
    if unknown:
        raise ValueError(f"cannot regroup training batches holding {sorted(unknown)}")
    rows = []
    for batch in batches:
        for index, kept in enumerate(batch["attention_mask"].bool()):
            rows.append({key: values[index][kept] for key, values in batch.items()})
    return sorted(rows, key=lambda row: len(row["input_ids"]), reverse=True)


ROW_WIDTH_FACTOR = 2  # a packed row holds up to this many times the step's longest sequence


def pack_step(
    batches: list[dict[str, torch.Tensor]], pad_token_id: int, multiple: int = PAD_MULTIPLE
) -> list[dict[str, torch.Tensor]]:
    """The step's sequences packed into rows of up to twice its longest (first fit, longest first), spread over
    the same number of micro-batches, fullest rows first: ``input_ids``, ``labels`` and ``position_ids``, no
    attention mask. Each sequence's positions start at 0 and its first label is ignored, as the previous
    sequence's last token must not learn to predict it; padding never used that label either, so the loss
    sums the same token losses over the same count.

    Regrouped instead when there are fewer rows than micro-batches, or when a packed micro-batch would hold
    more tokens than regrouping's largest (its first, the longest sequences): the memory plan covers that one."""
    sequences = _sequences(batches)
    longest = len(sequences[0]["input_ids"])
    # Rows of only the longest leave medium sequences alone in theirs: on the local commonsense mix 7% of
    # executed tokens stay padding at micro-batch 64 and 16% at 256; at twice the longest, 3% and 8%. Attention
    # costs more per token in a longer row (2% of GPT-Neo-1.3B's FLOPs at 256 tokens, 4% at 512).
    rows = _first_fit(sequences, ROW_WIDTH_FACTOR * longest)
    if len(rows) >= len(batches):
        packed = sorted((_packed_row(row) for row in rows), key=lambda row: len(row["input_ids"]), reverse=True)
        counts = [len(packed) // len(batches) + (i < len(packed) % len(batches)) for i in range(len(batches))]
        parts = [packed[sum(counts[:index]) : sum(counts[: index + 1])] for index in range(len(counts))]
        padded = [_pad_rows(part, pad_token_id, multiple) for part in parts]
        if max(part["input_ids"].numel() for part in padded) <= len(batches[0]["input_ids"]) * _round_up(
            longest, multiple
        ):
            return padded
    return regroup_by_length(batches, pad_token_id, multiple)


def _first_fit(sequences: list[dict[str, torch.Tensor]], width: int) -> list[list[dict[str, torch.Tensor]]]:
    """Rows of sequences (given longest first), each sequence in the first row with room for it."""
    rows: list[list[dict[str, torch.Tensor]]] = []
    free: list[int] = []
    for sequence in sequences:
        length = len(sequence["input_ids"])
        row = next((index for index, space in enumerate(free) if space >= length), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(sequence)
        free[row] -= length
    return rows


def _packed_row(sequences: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    labels = []
    for sequence in sequences:
        label = sequence["labels"].clone()
        label[0] = IGNORE_INDEX
        labels.append(label)
    return {
        "input_ids": torch.cat([sequence["input_ids"] for sequence in sequences]),
        "labels": torch.cat(labels),
        "position_ids": torch.cat([torch.arange(len(sequence["input_ids"])) for sequence in sequences]),
    }


def _round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _pad_rows(rows: list[dict[str, torch.Tensor]], pad_token_id: int, multiple: int) -> dict[str, torch.Tensor]:
    width = _round_up(len(rows[0]["input_ids"]), multiple)
    padded = {}
    for key in rows[0]:
        value = PAD_VALUES.get(key, pad_token_id)
        padded[key] = torch.stack(
            [torch.nn.functional.pad(row[key], (0, width - len(row[key])), value=value) for row in rows]
        )
    return padded


def real_tokens(batches: list[dict[str, torch.Tensor]]) -> int:
    return sum(int(batch["attention_mask"].sum()) for batch in batches)


def executed_tokens(batches: list[dict[str, torch.Tensor]]) -> int:
    return sum(batch["input_ids"].numel() for batch in batches)


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
    scale = float(alone.abs().max())
    apart = torch.allclose(packed[0], packed[1], rtol=1e-3, atol=1e-3 * scale)
    if model.get_input_embeddings().weight.dtype != torch.float32:
        return apart
    return apart and torch.allclose(packed[0], alone, rtol=1e-4, atol=1e-4 * scale)


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


def _base_forward_takes(model: torch.nn.Module, argument: str) -> bool:
    """Whether the transformers model (under a PEFT wrapper, if any) takes ``argument`` in its forward."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return argument in inspect.signature(base.forward).parameters


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
