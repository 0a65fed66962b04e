"""IA3 through PEFT: learned scaling vectors on the target modules' activations."""

from __future__ import annotations

from peft import IA3Config, PeftModel, get_peft_model
from transformers import PreTrainedModel

from peftbench.methods.common import AdapterSettings, resolve_targets

# IA3 scales the *input* of feed-forward output projections and the output of everything else
# (the paper's l_ff); these are the usual names of those projections.
FEEDFORWARD_NAMES = frozenset({"down_proj", "c_proj", "fc_out", "fc2", "wo", "dense_4h_to_h"})


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    targets = list(settings.targets)
    ia3_config = IA3Config(
        target_modules=targets,
        feedforward_modules=[name for name in targets if name in FEEDFORWARD_NAMES],
        fan_in_fan_out=resolve_targets(model, targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, ia3_config)
