"""The four methods as registry entries: name -> how to apply it to a base model and how to reload it.

``methods`` knows nothing about data or result files; it only turns a base model into a trainable
one and back from a checkpoint folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.methods import fft, hira, ia3, lora
from peftbench.methods.common import load_adapter


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable[[PreTrainedModel, RunConfig], nn.Module]
    # Rebuild a trained model from (checkpoint folder, base model path, weight dtype).
    load: Callable[[Path, str, torch.dtype], nn.Module] = load_adapter
    full_finetune: bool = False


METHODS: dict[str, Method] = {
    "hira": Method("hira", hira.apply, load=hira.load),
    "lora": Method("lora", lora.apply),
    "ia3": Method("ia3", ia3.apply),
    "fft": Method("fft", fft.apply, load=fft.load, full_finetune=True),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown --peft_type {name!r}; choose one of {', '.join(METHODS)}") from None
