"""Execution of a step: any micro-batch and the regrouping by length give the specification's gradient."""

from __future__ import annotations

import pytest

from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.train.plan import plan_execution


def fits_below(limit: int, checkpointed_limit: int):  # noqa: ANN202
    """A memory probe where a micro-batch fits up to ``limit`` sequences (``checkpointed_limit`` with checkpointing)."""
    asked = []

    def fits(size: int, checkpointing: bool) -> bool:
        asked.append((size, checkpointing))
        return size <= (checkpointed_limit if checkpointing else limit)

    return fits, asked


def test_auto_takes_the_largest_micro_batch_that_fits_and_drops_checkpointing_the_memory_does_not_need() -> None:
    fits, asked = fits_below(limit=70, checkpointed_limit=256)
    execution = plan_execution("auto", batch=8, grad_acc=32, checkpointing=True, fits=fits)
    assert (execution.micro_batch, execution.grad_acc, execution.checkpointing) == (64, 4, False)
    assert len(asked) <= 4  # a binary search over the divisors of 256 from 8 up, not every divisor
    assert execution.group_by_length


def test_auto_checkpoints_only_when_the_specifications_micro_batch_does_not_fit_without() -> None:
    fits, _ = fits_below(limit=4, checkpointed_limit=48)
    execution = plan_execution("auto", batch=8, grad_acc=32, checkpointing=False, fits=fits)
    assert (execution.micro_batch, execution.grad_acc, execution.checkpointing) == (32, 8, True)


def test_without_a_probe_auto_keeps_the_flags_micro_batch_and_spec_is_literal() -> None:
    auto = plan_execution("auto", batch=8, grad_acc=32, checkpointing=True, fits=None)
    assert (auto.micro_batch, auto.grad_acc, auto.checkpointing, auto.group_by_length) == (8, 32, True, True)
    spec = plan_execution("spec", batch=8, grad_acc=32, checkpointing=True, fits=fits_below(999, 999)[0])
    assert (spec.micro_batch, spec.grad_acc, spec.checkpointing, spec.group_by_length) == (8, 32, True, False)
    number = plan_execution("64", batch=8, grad_acc=32, checkpointing=False, fits=None)
    assert (number.micro_batch, number.grad_acc) == (64, 4)


@pytest.mark.parametrize(("setting", "message"), [("48", "does not divide the 256 sequences"), ("fast", "auto, spec")])
def test_a_micro_batch_that_would_change_the_step_is_refused(setting: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        RunConfig(peft_type="lora", batch=8, grad_acc=32, micro_batch=setting)
