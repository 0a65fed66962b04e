"""What a run under DeepSpeed or FSDP is refused before anything starts (the runs themselves: test_distributed)."""

from __future__ import annotations

import json

import pytest

from peftbench.config import RunConfig
from peftbench.errors import UserError


def _ds_config(tmp_path, zero: dict) -> str:  # noqa: ANN001
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": zero, "train_batch_size": "auto"}))
    return str(path)


def test_a_zero3_config_whose_checkpoints_would_hold_no_weights_is_refused(tmp_path) -> None:
    path = _ds_config(tmp_path, {"stage": 3})
    with pytest.raises(UserError, match="stage3_gather_16bit_weights_on_model_save"):
        RunConfig(peft_type="lora", ds_config=path)
    RunConfig(peft_type="lora", ds_config=_ds_config(tmp_path, {"stage": 2}))  # ZeRO-2 saves whole weights


def test_a_ds_config_that_is_not_json_is_one_error(tmp_path) -> None:
    path = tmp_path / "ds.json"
    path.write_text("{stage: 3")
    with pytest.raises(UserError, match="not a readable JSON file"):
        RunConfig(peft_type="lora", ds_config=str(path))


def test_adalora_is_refused_under_a_sharded_engine_naming_ddp(tmp_path) -> None:
    with pytest.raises(UserError, match="adalora cannot train under deepspeed: .*whole gradient.*use DDP"):
        RunConfig(peft_type="adalora", ds_config=_ds_config(tmp_path, {"stage": 2}))
