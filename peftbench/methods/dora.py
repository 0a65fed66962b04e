"""DoRA (Liu et al., 2024) through PEFT: W = m · (W0 + (alpha / r) B A) / ‖W0 + (alpha / r) B A‖ per column.

LoRA's update with a learned magnitude vector m per output column; trains LoRA's parameters plus m.
"""

from __future__ import annotations

from peft import PeftModel
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings
from peftbench.methods.lora import with_lora


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    return with_lora(model, settings, use_dora=True)
