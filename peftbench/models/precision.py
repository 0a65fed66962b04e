"""The precision policy (how weights are stored and computed in, per device and method) and parameter counts
that hold under sharding."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from peftbench.models.device import native_bf16

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """How weights are stored and how the Trainer runs mixed precision."""

    dtype: torch.dtype
    bf16: bool = False  # Trainer's bf16 autocast
    fp16: bool = False  # Trainer's fp16 autocast with loss scaling (needs fp32 trainable weights)
    why: str = ""

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype the Trainer computes in under autocast; None: the weights' own."""
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None

    def policy(self, model: torch.nn.Module) -> dict[str, object]:
        """What output.jsonl records: storage, autocast, and the memory that the trainable parameters' weights,
        gradients and AdamW's two moments take, each in the parameter's own dtype. PEFT keeps adapter weights in
        fp32 over a bf16 base (``autocast_adapter_dtype``), so an adapter costs 16 bytes per parameter there."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        state_bytes = 4 * parameter_bytes(trainable)  # weight, gradient, exp_avg, exp_avg_sq
        count = sum(parameter_numel(p) for p in trainable)
        return {
            "weights": self.name,
            "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in trainable}),
            "autocast": str(self.autocast).removeprefix("torch.") if self.autocast else None,
            "why": self.why,
            "trainable_state_bytes_per_param": round(state_bytes / count, 2) if count else None,
            "trainable_state_gb": round(state_bytes / 2**30, 3),
        }


def choose_precision(load_bit: int, full_finetune: bool = False) -> Precision:
    """--load_bit 16: bf16 where the GPU supports it, else fp16 on GPU, else fp32 on CPU; 32: fp32.

    Full fine-tuning never stores its weights in half precision: next to a weight of 0.02 the bf16 spacing is
    1.2e-4, so the specification's update of lr = 1e-5 would round to nothing and most weights would never
    move. It keeps fp32 master weights and AdamW state and computes under autocast (16 instead of 8 bytes per
    parameter: about 21 GB instead of 10.5 GB for GPT-Neo-1.3B's weights, gradients and optimizer state).
    """
    if load_bit == 32:
        precision = Precision(torch.float32, why="--load_bit 32")
    elif native_bf16():
        if full_finetune:
            why = "--load_bit 16, full fine-tuning: fp32 master weights and AdamW state, bf16 autocast"
            precision = Precision(torch.float32, bf16=True, why=why)
        else:
            precision = Precision(torch.bfloat16, bf16=True, why="--load_bit 16 on a GPU with bf16")
    elif torch.cuda.is_available():
        # Before Ampere bf16 is emulated, many times slower than fp16 with loss scaling.
        # fp16 loss scaling cannot unscale fp16 gradients, so full fine-tuning keeps fp32 master weights.
        dtype = torch.float32 if full_finetune else torch.float16
        precision = Precision(dtype, fp16=True, why="--load_bit 16 on a GPU without native bf16: fp16 autocast")
    else:
        precision = Precision(torch.float32, why="--load_bit 16 on CPU (no fast half precision): float32")
    logger.info("precision: weights in %s (%s)", precision.name, precision.why)
    return precision


def parameter_numel(parameter: torch.nn.Parameter) -> int:
    """The whole parameter's size: under DeepSpeed ZeRO-3 a process holds a shard (``numel()`` 0 when the weights
    were partitioned as they loaded) and ``ds_numel`` is the whole."""
    return getattr(parameter, "ds_numel", parameter.numel())


def parameter_bytes(parameters: Iterable[torch.nn.Parameter]) -> int:
    return sum(parameter_numel(p) * p.element_size() for p in parameters)


def count_parameters(model: torch.nn.Module) -> dict[str, float]:
    trainable = sum(parameter_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(parameter_numel(p) for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_percent": 100.0 * trainable / total}
