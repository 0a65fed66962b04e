"""LoRA through PEFT: W + (alpha / r) * B A, with B initialised to zero.

DoRA and PiSSA are LoRA with another decomposition or initialisation; they build through ``with_lora``.
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings, resolve_targets


def with_lora(model: PreTrainedModel, settings: AdapterSettings, **variant: Any) -> PeftModel:
    """The model with LoRA layers on the targets; ``variant``: LoraConfig options of a LoRA variant."""
    targets = list(settings.targets)
    lora_config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=resolve_targets(model, targets),
        bias="none",
        task_type="CAUSAL_LM",
        **variant,
    )
    return get_peft_model(model, lora_config)


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    return with_lora(model, settings)
