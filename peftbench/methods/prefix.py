"""Prefix tuning (Li & Liang, 2021) through PEFT: trained keys and values of ``--virtual_tokens`` positions
prepended at every layer. The official HiRA code's ``--peft_type prefix`` (models/get_models.py:102-137):
no reparametrisation MLP. Unlike it, training keeps the attention mask (the official code drops it for
prefix, train_hira.py:241-242, so padding is attended to)."""

from __future__ import annotations

from peft import PeftModel, PrefixTuningConfig, get_peft_model
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    return get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=settings.virtual_tokens, task_type="CAUSAL_LM"))
