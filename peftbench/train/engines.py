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

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import Trainer
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled


def launch_one_deepspeed_process(ds_config: str | None) -> None:
    """A DeepSpeed run started without a launcher (``python train_hira.py --ds_config ...``) gets the environment
    of a one-process launch. Without it accelerate never starts DeepSpeed's communication layer, and DeepSpeed
    then looks for MPI (``from mpi4py import MPI``). Called before the TrainingArguments set up the device."""
    if ds_config is None or "LOCAL_RANK" in os.environ:
        return
    for variable, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(variable, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def start_deepspeed_on_cpu(ds_config: str | None) -> None:
    """On a CPU, let DeepSpeed count the processes that accelerate connected (or the one process it did not).

    With ``use_cpu`` (the only way accelerate runs several CPU processes, over gloo) accelerate starts the process
    group with plain torch and never through DeepSpeed (accelerate/state.py: its DeepSpeed path is for
    accelerators only). ZeRO-3's ``zero.Init`` then finds DeepSpeed's communication layer missing, falls back to
    a world of 1 (deepspeed/runtime/config.py) and refuses the batch: ``train_batch_size is not equal to
    micro_batch_per_gpu * gradient_acc_step * world_size 4 != 2 * 1 * 1``. DeepSpeed wraps a group that exists,
    or starts one from the environment. On a GPU accelerate initialises DeepSpeed itself."""
    if ds_config is not None and not torch.cuda.is_available():
        import deepspeed

        deepspeed.comm.init_distributed(dist_backend="gloo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def engine_precision(ds_config: str | None, autocast: torch.dtype | None) -> dict[str, str]:
    """What DeepSpeed changes in the precision a run records. Its bf16 and fp16 modes ("auto" in ds_configs/ under
    --load_bit 16 on a GPU) store the model's weights in half precision and keep fp32 master weights inside its
    optimizer; a checkpoint holds the half-precision weights the forward computed with (its gradients are
    reduced in fp32: communication_data_type)."""
    if ds_config is None or autocast is None:
        return {}
    name = str(autocast).removeprefix("torch.")
    return {"engine": f"DeepSpeed {name}: weights stored in {name}, fp32 master weights in the optimizer; "
                      f"checkpoints hold the {name} weights"}  # fmt: skip


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
# (Activation checkpointing stays the Trainer's: through fsdp_config, PEFT saves an empty adapter, as PEFT strips
# FSDP's module prefix from the adapter's keys but not the checkpoint wrapper's.)
FSDP_CONFIG = {"version": 2, "state_dict_type": "FULL_STATE_DICT"}


def fsdp_config() -> dict[str, Any]:
    return dict(FSDP_CONFIG)  # transformers adds its own keys to the dict it is given


def configure_fsdp(trainer: Trainer) -> None:
    """What accelerate's FSDP plugin needs beyond the Trainer's settings, once the Trainer has built it.

    - Gradients are reduced in fp32, as DDP reduces the fp32 gradients of fp32 adapters and master weights;
      accelerate's policy under bf16 reduces in bf16.
    - On a CPU FSDP is switched on at all: accelerate turns it on for accelerator devices only, and CPU processes
      (gloo, the Trainer's ``use_cpu``) asked for FSDP silently trained plain DDP (accelerate/state.py). FSDP2
      runs on CPU with gloo; the base state is set too, or accelerate copies the old distributed type back the
      next time its state is read (private accelerate state: this path serves the CPU tests and laptops)."""
    if trainer.args.fsdp_plugin_args is None:
        return
    if not torch.cuda.is_available() and not trainer.is_fsdp_enabled:
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        trainer.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
        trainer.accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        trainer.is_fsdp_enabled = True
    half = torch.bfloat16 if trainer.args.bf16 else torch.float16 if trainer.args.fp16 else None
    if half is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        policy = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)
        trainer.accelerator.state.fsdp_plugin.mixed_precision_policy = policy
