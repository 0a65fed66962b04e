"""LoKr (Edalati et al., 2022; LyCORIS) through PEFT: ΔW = C ⊗ (B A), a Kronecker product, scaled by alpha / r."""

from __future__ import annotations

from peft import LoKrConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings, require_linear_targets


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    targets = require_linear_targets(model, settings, "lokr")
    return get_peft_model(model, LoKrConfig(r=settings.rank, alpha=settings.alpha, target_modules=targets))
