"""The engines that spread one training run over several processes, and what each changes for peftbench.

- **DDP** (``torchrun`` or ``accelerate launch`` without the flags below): every process holds the whole model
  and the Trainer averages the gradients.
- **DeepSpeed ZeRO** (``--ds_config``, e.g. ``ds_configs/zero2.json``, ``zero3.json``): ZeRO-2 shards AdamW's
  state and the gradients over the processes; ZeRO-3 the weights too, from the moment the model loads
  (transformers loads it under ``deepspeed.zero.Init`` while the run's TrainingArguments name a ZeRO-3 config).
- **FSDP** (``--fsdp``, what ``TrainingArguments.fsdp`` takes, e.g. ``"full_shard auto_wrap"``): the Trainer's
  FSDP2 (``fully_shard``) through accelerate, each decoder layer a unit; the model loads whole in every process
  and is sharded when training starts. Checkpoints hold the full state dict (a plain model or PEFT adapter).

Where no process holds the whole model, the memory probe does not run (``--micro_batch auto`` keeps
``--batch``), parameters count by their whole size (``models.parameter_numel``), a forward outside the engine
gathers the weights first (``whole_model``), and every process runs as many validation forwards
(``validation.ValidationShard``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import FSDPOption

from peftbench.errors import UserError

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


def start_deepspeed_on_cpu(ds_config: str | None) -> None:
    """On a CPU, let DeepSpeed count the processes that accelerate already connected.

    With ``use_cpu`` (the only way accelerate runs several CPU processes, over gloo) accelerate starts the process
    group with plain torch and never through DeepSpeed (accelerate/state.py: its DeepSpeed path is for
    accelerators only). ZeRO-3's ``zero.Init`` then finds DeepSpeed's communication layer missing, falls back to
    a world of 1 (deepspeed/runtime/config.py) and refuses the batch: ``train_batch_size is not equal to
    micro_batch_per_gpu * gradient_acc_step * world_size 4 != 2 * 1 * 1``. DeepSpeed wraps a group that exists.
    A single process (no torchrun) has none: it gets a group of one, where DeepSpeed would look for MPI.
    On a GPU accelerate initialises DeepSpeed itself."""
    if ds_config is None or torch.cuda.is_available():
        return
    import deepspeed

    if not dist.is_initialized():
        for variable, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(variable, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed.comm.init_distributed(dist_backend="gloo")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def whole_model(model: torch.nn.Module) -> Iterator[None]:
    """Inside, this process holds the whole model: ZeRO-3 gathers its shards (every process must enter, and each
    holds a full copy meanwhile). A model the engine has not yet sharded (DDP, FSDP before training) is whole."""
    if not is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


# FSDP1 is deprecated in transformers 5.24; on CPU its full state dict crashes and its sharded resume restores
# the optimizer wrongly. The full state dict makes every checkpoint a model or adapter that loads anywhere.
FSDP_CONFIG = {"version": 2, "state_dict_type": "FULL_STATE_DICT"}


def check_fsdp(setting: str) -> None:
    """One error for a --fsdp value the Trainer would refuse with a traceback."""
    unknown = [word for word in setting.split() if word not in {option.value for option in FSDPOption}]
    if not setting.split() or unknown:
        choices = ", ".join(option.value for option in FSDPOption)
        raise UserError(f"--fsdp {setting!r}: expected space-separated options of {choices}")


def enable_fsdp_on_cpu(trainer: Trainer) -> None:
    """accelerate turns FSDP on for accelerator devices only: CPU processes (gloo, the Trainer's ``use_cpu``) asked
    for FSDP silently train plain DDP (accelerate/state.py). FSDP2 itself runs on CPU with gloo, so on a CPU
    (the tests, a laptop) it is switched on here as accelerate does on a GPU; the base state is set too, or
    accelerate copies the old distributed type back the next time its state is read."""
    if torch.cuda.is_available() or trainer.args.fsdp_plugin_args is None or trainer.is_fsdp_enabled:
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    trainer.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    trainer.accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
