"""PiSSA (Meng et al., 2024) through PEFT: LoRA whose A and B start at the top-r singular triplets of W0.

The base weight becomes the residual W0 - U_r S_r V_rᵀ, so training starts exactly at the base model.
The saved adapter keeps PEFT's ``init_lora_weights="pissa"``: ``PeftModel.from_pretrained`` recomputes the
residual from the original base weights (an exact SVD, deterministic; not PEFT's randomised ``pissa_niter_*``),
then loads the trained A and B, so the file works on the unmodified base model like any adapter.
"""

from __future__ import annotations

from peft import PeftModel
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings
from peftbench.methods.lora import with_lora


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    return with_lora(model, settings, init_lora_weights="pissa")
