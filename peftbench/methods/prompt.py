"""Prompt tuning (Lester et al., 2021) through PEFT: ``--virtual_tokens`` trained input embeddings before the
prompt, randomly initialised; the model itself is unchanged."""

from __future__ import annotations

from peft import PeftModel, PromptTuningConfig, get_peft_model
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    return get_peft_model(model, PromptTuningConfig(num_virtual_tokens=settings.virtual_tokens, task_type="CAUSAL_LM"))
