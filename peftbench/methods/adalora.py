"""AdaLoRA (Zhang et al., 2023) through PEFT: an SVD-form update P Λ Q whose ranks are pruned by importance.

Every layer starts at 1.5 × the target average rank (the paper's initial budget b(0) = 1.5 b(T)) and is pruned
on a cubic schedule to ``--r_ab`` on average. The schedule needs the run's optimizer steps (``total_steps``),
and the budget is re-allocated after every optimizer step (``update_ranks``), from the gradients of that
step. The loss includes the orthogonality regulariser, as PEFT adds it in the model's forward: once per
forward, so a step of ``grad_acc`` micro-batches on ``processes`` processes would weigh it ``grad_acc ×
processes`` times, an objective that changed with the GPU's memory. ``penalty_share`` gives each forward its
share, and every execution of a step adds it once, as PEFT does for a step of one micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from peft import AdaLoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from peftbench.errors import UserError
from peftbench.methods.common import AdapterSettings, resolve_targets

INITIAL_BUDGET = 1.5  # b(0) / b(T), AdaLoRA paper §4 (experimental setup)
# Warm-up before pruning and final phase at fixed ranks, as fractions of the run: PEFT's AdaLoraConfig
# docstring example (tinit 10, tfinal 20 of total_step 100).
WARMUP_FRACTION, FINAL_FRACTION = 0.1, 0.2


def apply(model: PreTrainedModel, settings: AdapterSettings) -> PeftModel:
    total = settings.total_steps
    if total is None or total < 3:
        raise UserError(f"adalora needs a run of at least 3 optimizer steps for its rank schedule, got {total}")
    targets = list(settings.targets)
    adalora_config = AdaLoraConfig(
        init_r=math.ceil(INITIAL_BUDGET * settings.rank),
        target_r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=resolve_targets(model, targets),
        total_step=total,
        tinit=int(WARMUP_FRACTION * total),
        tfinal=int(FINAL_FRACTION * total),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, adalora_config)


def update_ranks(model: PeftModel, step: int) -> None:
    """After each optimizer step, while its gradients exist: update importance scores and prune to the budget."""
    model.base_model.update_and_allocate(step)


@contextmanager
def penalty_share(model: PeftModel, share: float) -> Iterator[None]:
    """Inside the block, every forward adds ``share`` of the orthogonality penalty's weight to the loss."""
    config = model.peft_config[model.base_model.trainable_adapter_name]
    weight = config.orth_reg_weight
    config.orth_reg_weight = weight * share
    try:
        yield
    finally:
        config.orth_reg_weight = weight
