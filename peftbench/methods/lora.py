"""LoRA through PEFT: W + (alpha / r) * B A, with B initialised to zero."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from peftbench.config import RunConfig
from peftbench.methods.common import resolve_targets


def apply(model: PreTrainedModel, config: RunConfig) -> PeftModel:
    targets = config.target_module_list
    lora_config = LoraConfig(
        r=config.r_ab,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=resolve_targets(model, targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)
