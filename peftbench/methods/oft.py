"""OFT (Qiu et al., 2023) through PEFT: W = R W0 with R block-diagonal orthogonal (Cayley parametrised).

Blocks of 32 × 32, PEFT's default ``oft_block_size`` (its recommended setting); each target's input size must
be a multiple of it.
"""

from __future__ import annotations

from peft import OFTConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from peftbench.errors import UserError
from peftbench.methods.common import AdapterSettings, adaptable_modules, resolve_targets

BLOCK_SIZE = 32


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    targets = list(settings.targets)
    fan_in_fan_out = resolve_targets(model, targets)
    for name, module in adaptable_modules(model, targets).items():
        size = module.weight.shape[0] if fan_in_fan_out else module.weight.shape[1]
        if size % BLOCK_SIZE:
            raise UserError(f"oft: {name} has {size} inputs, not a multiple of its block size {BLOCK_SIZE}")
    oft_config = OFTConfig(
        r=0, oft_block_size=BLOCK_SIZE, target_modules=targets, fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, oft_config)
