"""What the adapter methods share: finding target modules and wrapping/loading through PEFT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftbench.errors import UserError
from peftbench.models import load_base_model

ADAPTABLE_TYPES = (nn.Linear, Conv1D)


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> bool:
    """Check every target names at least one linear layer; return whether they store weights as (in, out).

    A target matches a module whose full name equals it or ends with '.<target>' (PEFT's rule).
    """
    linear = {name: module for name, module in model.named_modules() if isinstance(module, ADAPTABLE_TYPES)}
    matched: dict[str, list[nn.Module]] = {
        target: [m for name, m in linear.items() if name == target or name.endswith("." + target)] for target in targets
    }
    missing = [target for target, modules in matched.items() if not modules]
    if missing:
        available = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise UserError(
            f"--target_modules {','.join(missing)} not found in the model; "
            f"its linear modules are: {','.join(available)}"
        )
    kinds = {isinstance(m, Conv1D) for modules in matched.values() for m in modules}
    if len(kinds) > 1:
        raise UserError("--target_modules mixes Conv1D and Linear layers; adapt one kind at a time")
    return kinds.pop()


def load_adapter(ckpt: Path, base_model_path: str, dtype: torch.dtype) -> PeftModel:
    if not (ckpt / "adapter_config.json").is_file():
        raise UserError(f"{ckpt} has no adapter_config.json: not an adapter checkpoint")
    return PeftModel.from_pretrained(load_base_model(base_model_path, dtype), ckpt)
