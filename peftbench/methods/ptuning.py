"""P-Tuning (Liu et al., 2021) through PEFT's ``PromptEncoder``: ``--virtual_tokens`` input embeddings before the
prompt, produced by PEFT's MLP reparameterisation (Linear, ReLU, Linear, ReLU, Linear) from trained embeddings; the
model itself is unchanged.

The encoder's hidden size is PEFT's default, the model's width: with 20 virtual tokens this gives the HiRA paper's
0.7428% (Llama-2-7B) and 0.6240% (Llama-3-8B) of parameters (tests/methods/test_ptuning.py). The paper and the
official HiRA code state no P-Tuning settings; the figures follow from this arithmetic alone.
"""

from __future__ import annotations

from peft import PeftModel, PromptEncoderConfig, PromptEncoderReparameterizationType, get_peft_model
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    config = PromptEncoderConfig(
        num_virtual_tokens=settings.virtual_tokens,
        encoder_reparameterization_type=PromptEncoderReparameterizationType.MLP,
        encoder_hidden_size=model.config.hidden_size,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
