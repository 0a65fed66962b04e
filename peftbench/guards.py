"""Trainer callbacks that keep a run from losing work or producing garbage silently.

- ``InterruptSaver``: Ctrl-C or SIGTERM (pre-emption) finishes the current step, saves a checkpoint, stops.
- ``DivergenceGuard``: a NaN/inf training loss stops the run at once, naming the step.
- ``DiskSpaceGuard``: a checkpoint that would not fit on the disk is not started; the run stops instead.
"""

from __future__ import annotations

import math
import shutil
import signal
from pathlib import Path
from types import FrameType

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback

from peftbench.models import parameter_bytes


class InterruptSaver(TrainerCallback):
    """The first SIGINT/SIGTERM asks for a checkpoint at the end of the step; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_train_begin(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        for signum in (signal.SIGINT, signal.SIGTERM):
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
