"""Trainer callbacks that keep a run from losing work or producing garbage silently.

- ``InterruptSaver``: Ctrl-C, SIGTERM (pre-emption) or SIGHUP (a closed terminal) finishes the current step,
  saves a checkpoint, stops.
- ``DivergenceGuard``: a NaN/inf training loss stops the run at once, naming the step.
- ``DiskSpaceGuard``: a checkpoint that would not fit on the disk is not started; the run stops instead.

``Guards`` holds the three and turns a stop into a recorded event and one clear error. Beside them,
``RunStatsCallback`` logs wall time and peak memory, and ``MethodSchedule`` runs a method's own step.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from pathlib import Path
from types import FrameType

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback

from peftbench.errors import TrainingInterrupted, UserError
from peftbench.methods import Method
from peftbench.models.device import DeviceMemory, peak_memory
from peftbench.models.precision import parameter_bytes
from peftbench.runs.records import RUN_RECORD, append_record


class InterruptSaver(TrainerCallback):
    """The first SIGINT/SIGTERM/SIGHUP asks for a checkpoint at the end of the step; a second SIGINT aborts at
    once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_train_begin(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class DivergenceGuard(TrainerCallback):
    """Stops at the first non-finite logged training loss (the Trainer's NaN filter must be off)."""

    def __init__(self) -> None:
        self.diverged_at: tuple[int, float] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:  # noqa: ANN001
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss) and self.diverged_at is None:
            self.diverged_at = (state.global_step, loss)
            control.should_training_stop = True
            control.should_save = False  # a checkpoint of diverged weights is worth nothing


class DiskSpaceGuard(TrainerCallback):
    """Before each checkpoint, checks the free space against the checkpoint's expected size."""

    def __init__(self, model: torch.nn.Module, run_dir: Path, saves_full_model: bool) -> None:
        trainable = parameter_bytes(p for p in model.parameters() if p.requires_grad)
        weights = parameter_bytes(model.parameters()) if saves_full_model else trainable
        # weights (adapter or full model) + AdamW's two moments of every trainable parameter, plus 10%.
        self.needed_bytes = int(1.1 * (weights + 2 * trainable))
        self.run_dir = run_dir
        self.shortfall: tuple[int, int] | None = None  # (step, free bytes)

    def on_step_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if control.should_save:
            free = [shutil.disk_usage(self.run_dir).free]
            if PartialState().num_processes > 1:  # one decision: a save that some processes skip would hang the rest
                broadcast_object_list(free, from_process=0)
            free = free[0]
            if free < self.needed_bytes:
                self.shortfall = (state.global_step, free)
                control.should_save = False
                control.should_training_stop = True


class RunStatsCallback(TrainerCallback):
    """Adds wall time and peak memory to the Trainer's logs (and so to trainer_state.json)."""

    def __init__(self, memory: DeviceMemory | None) -> None:
        self.start, self.memory = time.perf_counter(), memory

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:  # noqa: ANN001
        if logs is not None:
            stats = {"elapsed_s": round(time.perf_counter() - self.start, 2), **peak_memory(self.memory)}
            logs.update(stats)  # what is printed
            if state.log_history:  # what trainer_state.json keeps: the Trainer stored a copy of logs before this call
                state.log_history[-1].update(stats)


class MethodSchedule(TrainerCallback):
    """Runs the method's own step (AdaLoRA's rank allocation) and checks the run is the length it was built for."""

    def __init__(self, method: Method, total_steps: int | None) -> None:
        self.method, self.total_steps = method, total_steps

    def on_train_begin(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.total_steps is not None and state.max_steps != self.total_steps:
            raise RuntimeError(
                f"{self.method.name} was built for {self.total_steps} steps, the run takes {state.max_steps}"
            )

    def on_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:  # noqa: ANN001
        if self.method.after_optimizer_step is not None:
            self.method.after_optimizer_step(model, state.global_step)


class Guards:
    """The callbacks that stop a run early, and what their stop means for the run."""

    def __init__(self, model: torch.nn.Module, run_dir: Path, saves_full_model: bool) -> None:
        self.interrupt, self.divergence = InterruptSaver(), DivergenceGuard()
        self.disk = DiskSpaceGuard(model, run_dir, saves_full_model=saves_full_model)
        self.run_dir = run_dir

    def raise_if_stopped(self, step: int, lr: float, processes: PartialState) -> None:
        """Turn a guard's stop into a recorded event and one clear message."""
        record_path = self.run_dir / RUN_RECORD
        stop = self._stop(lr)
        if stop is not None:
            event, at_step, message = stop
            if processes.is_main_process:
                append_record(record_path, {"event": event, "step": at_step, "message": message})
            raise UserError(message)
        if self.interrupt.received is not None:
            checkpoint = self.run_dir / f"checkpoint-{step}"
            if processes.is_main_process:
                append_record(
                    record_path,
                    {"event": "interrupted", "signal": self.interrupt.received, "checkpoint": str(checkpoint)},
                )
            raise TrainingInterrupted(
                f"{self.interrupt.received} received: saved {checkpoint} at step {step}; "
                "resume with the same command plus --resume"
            )

    def _stop(self, lr: float) -> tuple[str, int, str] | None:
        """(event, step, message) of a divergence or a full disk, which end the run without a checkpoint."""
        if self.divergence.diverged_at is not None:
            at_step, loss = self.divergence.diverged_at
            message = f"training loss became {loss} at step {at_step}; try --load_bit 32 or a lower --lr (now {lr})"
            return "diverged", at_step, message
        if self.disk.shortfall is not None:
            at_step, free = self.disk.shortfall
            message = (
                f"not enough free disk for the checkpoint at step {at_step} in {self.run_dir}: "
                f"{free / 2**30:.2f} GB free, about {self.disk.needed_bytes / 2**30:.2f} GB needed"
            )
            return "disk_full", at_step, message
        return None
