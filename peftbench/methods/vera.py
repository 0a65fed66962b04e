"""VeRA (Kopiczko et al., 2024) through PEFT: ΔW = Λ_b B Λ_d A with A and B frozen, random and shared.

Only the scaling vectors d (rank) and b (output size) train. The frozen projections are saved in the
adapter file (PEFT's ``save_projection``), so a load never depends on regenerating them from a seed.
"""

from __future__ import annotations

from peft import PeftModel, VeraConfig, get_peft_model
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings, resolve_targets


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    targets = list(settings.targets)
    vera_config = VeraConfig(
        r=settings.rank,
        vera_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=resolve_targets(model, targets),
        save_projection=True,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, vera_config)
