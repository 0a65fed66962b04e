"""Full fine-tuning: every parameter trains; checkpoints are plain transformers models."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from peftbench.errors import UserError
from peftbench.methods.common import AdapterSettings
from peftbench.models.load import load_base_model


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PreTrainedModel:
    model.requires_grad_(True)
    return model


def load(ckpt: Path, base_model_path: str, dtype: torch.dtype) -> PreTrainedModel:
    """The checkpoint is the whole model; the base model is not needed."""
    if not (ckpt / "config.json").is_file():
        raise UserError(f"{ckpt} has no config.json: not a full fine-tuning checkpoint")
    return load_base_model(str(ckpt), dtype)
