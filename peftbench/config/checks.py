"""The pure checks of flags that need more than a type: each raises one ``UserError`` naming the flag.

They live below every stage that acts on the flags (training, the engines, tracking), so a configuration is
refused where it is built, before any model loads.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from transformers.trainer_utils import FSDPOption

from peftbench.errors import UserError

MICRO_BATCH_MODES = ("auto", "spec")  # or a number of sequences


def check_micro_batch(setting: str, batch: int, grad_acc: int) -> None:
    """One clear error for a --micro_batch that is neither a mode nor a divisor of the step's sequences."""
    if setting in MICRO_BATCH_MODES:
        return
    per_step = batch * grad_acc
    if not setting.isdigit() or int(setting) <= 0:
        raise UserError(f"--micro_batch must be auto, spec or a positive number of sequences, got {setting!r}")
    if per_step % int(setting):
        raise UserError(
            f"--micro_batch {setting} does not divide the {per_step} sequences of a step (--batch {batch} × "
            f"--grad_acc {grad_acc}); the step's examples must stay the same"
        )


# Without it a ZeRO-3 checkpoint holds no weights file (the Trainer points to zero_to_fp32.py instead), and
# neither `peftbench eval` nor PeftModel.from_pretrained could load it.
ZERO3_GATHER_ON_SAVE = "stage3_gather_16bit_weights_on_model_save"


def read_ds_config(path: str) -> dict[str, Any]:
    """The DeepSpeed config file, checked for what peftbench needs of it."""
    try:
        settings = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--ds_config {path}: not a readable JSON file ({exc})") from None
    zero = settings.get("zero_optimization", {}) if isinstance(settings, dict) else None
    if not isinstance(zero, dict):
        raise UserError(f"--ds_config {path}: zero_optimization must be an object")
    if zero.get("stage") == 3 and zero.get(ZERO3_GATHER_ON_SAVE) is not True:
        raise UserError(
            f'--ds_config {path}: ZeRO-3 needs "{ZERO3_GATHER_ON_SAVE}": true in zero_optimization, or its '
            "checkpoints hold no weights that peftbench eval can load (see ds_configs/zero3.json)"
        )
    return settings


# What FSDP2's fully_shard takes; hybrid sharding and no_shard are FSDP1's.
FSDP_OPTIONS = (FSDPOption.FULL_SHARD, FSDPOption.SHARD_GRAD_OP, FSDPOption.AUTO_WRAP, FSDPOption.OFFLOAD)


def check_fsdp(setting: str) -> None:
    """One error for a --fsdp value the Trainer would refuse with a traceback."""
    allowed = [option.value for option in FSDP_OPTIONS]
    if not setting.split() or any(word not in allowed for word in setting.split()):
        raise UserError(f"--fsdp {setting!r}: expected space-separated options of {', '.join(allowed)}")


TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "trackio")


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_tracker(name: str) -> None:
    """One error for a tracker that is unknown or not installed, before any work starts."""
    if name not in TRACKERS:
        raise UserError(f"--report_to {name!r}: choose one of {', '.join(TRACKERS)}")
    if name != "none":
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise UserError(
                f"--report_to {name} needs the {TRACKER_PACKAGES[name]} package: pip install {TRACKER_PACKAGES[name]}"
            )


def require_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
