"""LoHa (Hyeon-Woo et al., FedPara, 2022) through PEFT: ΔW = (B1 A1) ⊙ (B2 A2), scaled by alpha / r."""

from __future__ import annotations

from peft import LoHaConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings, require_linear_targets


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    targets = require_linear_targets(model, settings, "loha")
    return get_peft_model(model, LoHaConfig(r=settings.rank, alpha=settings.alpha, target_modules=targets))
