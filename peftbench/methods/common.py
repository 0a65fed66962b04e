"""What the methods share: the plain settings they are built from, target lookup, loading through PEFT."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftbench.errors import UserError
from peftbench.models.load import load_base_model

ADAPTABLE_TYPES = (nn.Linear, Conv1D)


@dataclass(frozen=True)
class AdapterSettings:
    """The plain values a method is built from (``RunConfig.adapter_settings``); None where it does not apply."""

    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    targets: tuple[str, ...] = ()
    virtual_tokens: int | None = None
    total_steps: int | None = None  # optimizer steps of the whole run (AdaLoRA's rank schedule)
    keep_product: bool = False  # HiRA: keep W0 ⊙ (1 + BA) for backward
    mora_type: int | None = None  # MoRA's compression (mora.MORA_TYPES)


def _names(target: str, module_name: str) -> bool:
    """PEFT's rule: a target names a module whose full name equals it or ends with '.<target>'."""
    return module_name == target or module_name.endswith("." + target)


def adaptable_modules(model: nn.Module, targets: Sequence[str]) -> dict[str, nn.Module]:
    """The linear layers the targets name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, ADAPTABLE_TYPES) and any(_names(t, name) for t in targets)
    }


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> bool:
    """Check every target names at least one linear layer; return whether they store weights as (in, out)."""
    found = adaptable_modules(model, targets)
    missing = [t for t in targets if not any(_names(t, name) for name in found)]
    if missing:
        linear = [name for name, module in model.named_modules() if isinstance(module, ADAPTABLE_TYPES)]
        available = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise UserError(
            f"--target_modules {','.join(missing)} not found in the model; "
            f"its linear modules are: {','.join(available)}"
        )
    kinds = {isinstance(m, Conv1D) for m in found.values()}
    if len(kinds) > 1:
        raise UserError("--target_modules mixes Conv1D and Linear layers; adapt one kind at a time")
    return kinds.pop()


def require_linear_targets(model: nn.Module, settings: AdapterSettings, method: str) -> list[str]:
    """The targets, for a method PEFT implements for nn.Linear only (not GPT-2-style Conv1D)."""
    targets = list(settings.targets)
    if resolve_targets(model, targets):
        raise UserError(f"{method} adapts nn.Linear layers only; --target_modules {','.join(targets)} are Conv1D")
    return targets


def load_adapter(ckpt: Path, base_model_path: str, dtype: torch.dtype) -> PeftModel:
    if not (ckpt / "adapter_config.json").is_file():
        raise UserError(f"{ckpt} has no adapter_config.json: not an adapter checkpoint")
    return PeftModel.from_pretrained(load_base_model(base_model_path, dtype), ckpt)
