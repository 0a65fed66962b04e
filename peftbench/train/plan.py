"""How a training step is executed: micro-batch size, gradient checkpointing, packing.

The specification fixes what a step computes: ``--batch × --grad_acc × processes`` sequences, in the order
the seeded sampler draws them. How those sequences pass through the model is ours to choose, because the
step's gradient does not depend on it:

- the Trainer divides the step's summed token loss by the step's label-token count (``num_items_in_batch``),
  so a step split into 4 micro-batches of 8 or 1 of 32 has the same gradient, up to float rounding;
- the sampler's permutation depends on the seed and the data, not on the micro-batch, and a step is
  ``grad_acc`` consecutive micro-batches of it, so step k holds the same examples whatever divides it;
- inside a step the examples are regrouped by length or packed (``batches``), in the same number of
  micro-batches.

Dropout is the one exception: different micro-batches draw different masks from the same distribution.
``--micro_batch spec`` executes the flags literally; ``tests/train/test_batches.py`` checks that a step is the
same at 8 × 4, 32 × 1, 8 × 4 regrouped and packed at 8 × 4 and 32 × 1.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from peftbench.config import RunConfig
from peftbench.config.checks import check_micro_batch
from peftbench.errors import UserError
from peftbench.methods import Method
from peftbench.models.device import DeviceMemory
from peftbench.models.precision import Precision, parameter_bytes
from peftbench.train.batches import PAD_MULTIPLE, ROW_WIDTH_FACTOR, round_up
from peftbench.train.engines import whole_model
from peftbench.train.loss import keeps_packed_sequences_apart

logger = logging.getLogger(__name__)

# Share of the GPU's memory a probed micro-batch may reach, the rest left to fragmentation.
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
    packing: bool = False  # decided once the model is built: see keeps_packed_sequences_apart

    def record(self) -> dict[str, Any]:
        return asdict(self)


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
    return _largest_that_fits(batch, grad_acc, checkpointing, fits)


def _largest_that_fits(batch: int, grad_acc: int, checkpointing: bool, fits: Fits) -> Execution:
    per_step = batch * grad_acc
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


def agreed_execution(config: RunConfig, fits: Fits | None, packing: bool, processes: PartialState) -> Execution:
    """The micro-batch, checkpointing and packing of this run; every process runs process 0's plan."""
    plan = plan_execution(config.micro_batch, config.batch, config.grad_acc, config.enable_grad_ckpt, fits)
    plans = [dataclasses.replace(plan, packing=packing and plan.group_by_length)]
    if processes.num_processes > 1:
        broadcast_object_list(plans, from_process=0)
    return plans[0]


def packing_for(config: RunConfig, model: torch.nn.Module) -> bool:
    """Packing where asked or left to ``auto`` and the model keeps packed sequences apart; asked for and
    impossible is an error, not a silent fallback."""
    if config.packing is False or config.micro_batch == "spec":  # spec: the flags literally
        return False
    with whole_model(model):  # under ZeRO-3 every process holds the whole model meanwhile
        apart = keeps_packed_sequences_apart(model)
    if apart:
        return True
    if config.packing:
        raise UserError(
            f"--packing: {config.model_name} with {config.peft_type} does not keep packed sequences apart "
            "(prompt learning, or a model that ignores restarting position ids); use --no-packing"
        )
    return False


def optimizer_steps(examples: int, config: RunConfig, processes: int) -> int:
    """The optimizer steps the Trainer will take: --max_steps, else epochs × ceil(micro-batches / grad_acc)."""
    if config.max_steps > 0:
        return config.max_steps
    micro_batches = math.ceil(examples / (config.batch * processes))
    return math.ceil(config.epoch * math.ceil(micro_batches / config.grad_acc))


def refuse_data_parallel(gpus_in_process: int) -> None:
    """Several GPUs seen by one process make the Trainer wrap the model in ``nn.DataParallel``, which computes
    the loss once on the gathered logits and then multiplies it by the GPU count (and AdaLoRA's step count
    disagrees with its schedule): one process per GPU is the only way that trains the same model."""
    if gpus_in_process > 1:
        raise UserError(
            f"this process sees {gpus_in_process} GPUs, and one process would train on them through "
            f"nn.DataParallel (loss and gradients × {gpus_in_process}); run one process per GPU: "
            f"torchrun --nproc_per_node {gpus_in_process} train_hira.py <the same flags>, "
            "or choose one GPU with CUDA_VISIBLE_DEVICES=0"
        )


def micro_batch_probe(
    config: RunConfig,
    method: Method,
    model: torch.nn.Module,
    precision: Precision,
    processes: PartialState,
    memory: DeviceMemory | None,
    longest: int,
    packing: bool,
) -> Fits | None:
    """What ``--micro_batch auto`` plans with: a probe of this model on this device, or None where there is
    nothing to probe (a CPU) or the model is not whole in this process (DeepSpeed, FSDP)."""
    if memory is None or config.micro_batch != "auto" or config.sharded_engine is not None:
        return None
    model.to(processes.device)
    reserved = reserved_bytes(model, processes.num_processes)
    probe = memory_probe(model, memory, longest, packing, reserved, precision.autocast)
    can_checkpoint = "enable_grad_ckpt" not in method.refuses  # prefix tuning cannot

    def fits(size: int, checkpointing: bool) -> bool:
        return (can_checkpoint or not checkpointing) and probe(size, checkpointing)

    return fits


def probe_shapes(micro_batch: int, longest: int, packing: bool) -> list[tuple[int, int]]:
    """The largest micro-batches a run of sequences up to ``longest`` tokens can execute: ``micro_batch`` rows
    of the longest (rounded up as padding rounds it); packed, also half as many rows twice as long (``pack_step``
    caps a packed micro-batch at regrouping's largest, so its rows can reach twice the longest only that way)."""
    width = round_up(longest, PAD_MULTIPLE)
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
    return _MemoryProbe(model, memory, longest, packing, reserved_bytes, autocast)


class _MemoryProbe:
    """``memory_probe``'s Fits: each call probes every shape of one micro-batch."""

    def __init__(
        self,
        model: torch.nn.Module,
        memory: DeviceMemory,
        longest: int,
        packing: bool,
        reserved_bytes: int,
        autocast: torch.dtype | None,
    ) -> None:
        self.model, self.memory, self.longest, self.packing, self.autocast = model, memory, longest, packing, autocast
        self.device = next(model.parameters()).device
        self.budget = MEMORY_HEADROOM * memory.total_bytes - reserved_bytes
        self.vocabulary = model.get_input_embeddings().num_embeddings
        self.sequence = round_up(longest, PAD_MULTIPLE)

    def __call__(self, micro_batch: int, checkpointing: bool) -> bool:
        peaks = self._peaks(probe_shapes(micro_batch, self.longest, self.packing), checkpointing)
        result = None not in peaks and max(peaks) <= self.budget
        logger.info("memory probe: micro-batch %d, checkpointing %s: %s", micro_batch, checkpointing,
                    "out of memory" if None in peaks else f"peak {max(peaks) / 2**30:.2f} GiB")  # fmt: skip
        return result

    def _peaks(self, shapes: list[tuple[int, int]], checkpointing: bool) -> list[int | None]:
        model = self.model
        modes = {module: module.training for module in model.modules()}  # a PEFT wrapper and its model can differ
        model.train()
        _set_checkpointing(model, checkpointing)
        try:
            return [self._peak(rows, width) for rows, width in shapes]
        finally:
            _set_checkpointing(model, False)
            for module, training in modes.items():
                module.training = training
            self.memory.release_cache()

    def _peak(self, rows: int, width: int) -> int | None:
        """The peak memory of one forward and backward of ``rows × width`` random tokens; None: out of memory."""
        device, autocast = self.device, self.autocast
        self.memory.release_cache()
        self.memory.reset_peak()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                ids = torch.randint(self.vocabulary, (rows, width), device=device)
                # A packed row's positions restart with each sequence (and absolute position tables end).
                packed = {"position_ids": (torch.arange(width, device=device) % self.sequence).expand(rows, -1)}
                with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                    # Every token a label: the most logits a step can need (llm-adapters trains on the prompt too).
                    loss = self.model(input_ids=ids, labels=ids, **(packed if width > self.sequence else {})).loss
                loss.backward()
            return self.memory.peak_bytes()
        except torch.OutOfMemoryError:
            return None
        finally:
            self.model.zero_grad(set_to_none=True)


def _set_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    if enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
