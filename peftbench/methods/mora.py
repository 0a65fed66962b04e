"""MoRA (Jiang et al., 2024): one trained square matrix M (r̂ × r̂) in place of LoRA's B A, between fixed maps that
compress the input to r̂ and decompress M's output to the layer's width, so that ΔW can reach rank r̂ at LoRA's
parameter count: r̂ = ⌊√((d_in + d_out)·r) + ½⌋ makes r̂² ≈ (d_in + d_out)·r.

Written from the MoRA paper and the official code's equations (kongds/MoRA, peft-mora/src/peft/tuners/lora/layer.py,
``_apply_mora`` and ``get_delta_weight``):

- the input is extended cyclically to a multiple of r̂ (x₀ … x_{d_in−1}, x₀, x₁, …) and cut into chunks of r̂;
- type 1 (Eq. 6, sharing): the chunks are summed into one, M maps it, the output repeats it up to d_out;
- type 6 (Eq. 9, RoPE; r̂ made even): chunk i is rotated as RoPE rotates position i, M maps every chunk, and the
  output is the chunks' outputs in a row, cut to d_out or repeated up to it;
- M starts at zero, so training starts at the base model, and the update is not scaled (MoRA has no alpha).

The files are the official code's: a LoraConfig with ``use_mora`` and ``mora_type``, M saved under both ``lora_A``
and ``lora_B`` (one module there and here). The layers are PEFT's LoRA layers with MoRA's update, placed through
LoRA's custom-layer hook, so PEFT's trainable marking, state-dict names, merge and unmerge apply. Plain PEFT has no
MoRA: it ignores the two fields and stops on the weights' shapes; ``load`` (or the official fork) reads them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn
from transformers import PreTrainedModel

from peftbench.errors import UserError
from peftbench.methods.common import AdapterSettings, require_linear_targets
from peftbench.models.load import load_base_model

MORA_TYPES = (1, 6)  # sharing (Eq. 6), RoPE (Eq. 9): the official code's type numbers
ROPE_BASE = 10000.0  # the official code's inv_freq base, as in RoPE


def square_side(in_features: int, out_features: int, rank: int, mora_type: int) -> int:
    """r̂ for a layer: the square whose parameters match LoRA's at rank r, even for type 6 (RoPE rotates pairs)."""
    side = int(math.sqrt((in_features + out_features) * rank) + 0.5)
    return side // 2 * 2 if mora_type == 6 else side


def _cyclic(values: torch.Tensor, width: int, dim: int = -1) -> torch.Tensor:
    """``values`` along ``dim`` cut to ``width``, or repeated from its start up to it. Concatenation, not an index:
    the backward of a repeated index adds on a GPU in no fixed order (atomics), and training would not repeat."""
    size = values.shape[dim]
    if size == width:
        return values
    return torch.cat([values] * -(-width // size), dim=dim).narrow(dim, 0, width)


def _rope_cos_sin(chunk_count: int, side: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's angles [chunk, coordinate]: chunk i is position i; coordinates j and j + r̂/2 share a
    frequency."""
    inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, side, 2, device=device).float() / side)
    angles = torch.outer(torch.arange(chunk_count, device=device).float(), inv_freq).repeat(1, 2)
    return angles.cos(), angles.sin()


def _chunk_count(in_features: int, side: int) -> int:
    return -(-in_features // side)


def mora_update(x: torch.Tensor, square: torch.Tensor, out_features: int, mora_type: int) -> torch.Tensor:
    """ΔW x for inputs [..., d_in]: compress to chunks of r̂, apply M to each, decompress to d_out."""
    side = square.shape[0]
    chunk_count = _chunk_count(x.shape[-1], side)
    chunks = _cyclic(x, chunk_count * side).unflatten(-1, (chunk_count, side))
    if mora_type == 1:
        compressed = chunks.sum(dim=-2, keepdim=True)
    else:
        cos, sin = (t.to(x.dtype) for t in _rope_cos_sin(chunk_count, side, x.device))
        half = side // 2
        compressed = chunks * cos + torch.cat((-chunks[..., half:], chunks[..., :half]), dim=-1) * sin
    return _cyclic(F.linear(compressed, square).flatten(-2), out_features)


def mora_delta_weight(square: torch.Tensor, in_features: int, out_features: int, mora_type: int) -> torch.Tensor:
    """The d_out × d_in matrix ``mora_update`` applies, built from the same operators: M (times chunk i's rotation
    for type 6) at each chunk's columns, the cyclic extension's columns added onto those they repeat, the rows
    repeated as the output is."""
    side = square.shape[0]
    chunk_count = _chunk_count(in_features, side)
    rows = side if mora_type == 1 else chunk_count * side
    weight = square.new_zeros(rows, in_features)
    if mora_type == 6:
        cos, sin = (t.to(square.dtype) for t in _rope_cos_sin(chunk_count, side, square.device))
        half = side // 2
        # M R_i: the rotation mixes column j with column j ± r̂/2, with the sign the transpose gives.
        partner = torch.cat((square[:, half:], -square[:, :half]), dim=1)
    for i in range(chunk_count):
        columns = torch.arange(i * side, (i + 1) * side, device=square.device) % in_features
        if mora_type == 1:
            weight.index_add_(1, columns, square)
        else:
            weight[i * side : (i + 1) * side].index_add_(1, columns, square * cos[i] + partner * sin[i])
    return _cyclic(weight, out_features, dim=0)


class MoraLinear(LoraLinear):
    """PEFT's LoRA linear layer holding MoRA's square (``lora_A`` and ``lora_B`` are the one r̂ × r̂ module, as in
    the official code) and applying MoRA's update; ``r`` holds r̂ per adapter, as there."""

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: MoraConfig, **kwargs: Any) -> None:
        side = square_side(self.in_features, self.out_features, r, config.mora_type)
        square = nn.Linear(side, side, bias=False)
        nn.init.zeros_(square.weight)
        self.lora_A[adapter_name] = square
        self.lora_B[adapter_name] = square
        self.mora_type = {**getattr(self, "mora_type", {}), adapter_name: config.mora_type}
        self.r[adapter_name] = side
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = 1.0
        dropout = config.lora_dropout
        self.lora_dropout[adapter_name] = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.lora_bias[adapter_name] = False
        self.use_rslora[adapter_name] = False
        self.use_dora[adapter_name] = False
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        square = self.lora_A[adapter].weight
        return mora_delta_weight(square, self.in_features, self.out_features, self.mora_type[adapter])

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for adapter in self.active_adapters:
            if adapter in self.lora_A:
                square = self.lora_A[adapter].weight
                inputs = self.lora_dropout[adapter](x.to(square.dtype))
                update = mora_update(inputs, square, self.out_features, self.mora_type[adapter])
                result = result + update.to(result.dtype)
        return result


@dataclass
class MoraConfig(LoraConfig):
    """LoraConfig with the official MoRA code's two fields; ``r`` is LoRA's rank, from which r̂ follows."""

    use_mora: bool = field(default=True, metadata={"help": "The official code's switch from LoRA to MoRA."})
    mora_type: int = field(default=6, metadata={"help": "Compression: 6 RoPE (Eq. 9) or 1 sharing (Eq. 6)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mora_type not in MORA_TYPES:
            raise ValueError(f"mora_type must be one of {MORA_TYPES}, got {self.mora_type}")
        self._register_custom_module({nn.Linear: MoraLinear})


def peft_config(model: PreTrainedModel, settings: AdapterSettings) -> MoraConfig:
    return MoraConfig(
        r=settings.rank,
        target_modules=require_linear_targets(model, settings, "mora"),
        lora_dropout=settings.dropout,
        mora_type=settings.mora_type,
        task_type="CAUSAL_LM",
    )


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    return get_peft_model(model, peft_config(model, settings))


def load(ckpt: Path, base_model_path: str, dtype: torch.dtype) -> PeftModel:
    config_file = ckpt / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{ckpt} has no adapter_config.json: not an adapter checkpoint")
    saved = MoraConfig.from_json_file(str(config_file))
    if saved.get("use_mora") is False:
        raise UserError(f"{ckpt} holds a LoRA adapter of the MoRA fork (use_mora false), not MoRA: --peft_type lora")
    known = {f.name for f in dataclasses.fields(MoraConfig)}  # keys of other PEFT versions are dropped, as PEFT does
    config = MoraConfig(**{key: value for key, value in saved.items() if key in known})
    return PeftModel.from_pretrained(load_base_model(base_model_path, dtype), ckpt, config=config)
