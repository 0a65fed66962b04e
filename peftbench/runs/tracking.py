"""Experiment trackers: a training run logs to the Trainer's tracker (``--report_to``), and its evaluations log to
the same tracker run, so one tracker run holds a training run's losses and its benchmark accuracies.

- ``tensorboard``: the run's events go to ``<run folder>/tensorboard``; an evaluation adds ``eval_<mode>/<dataset>``
  accuracies there, at the evaluated checkpoint's step (TensorBoard shows one run per folder).
- ``wandb``: the run's id is fixed by its folder (``WANDB_RUN_ID``), and an evaluation resumes that run.
- ``mlflow``, ``trackio``: training runs log through the Trainer; evaluations are not logged to them (a warning
  says so): they name their runs at creation, and nothing here resumes them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)
TENSORBOARD_FOLDER = "tensorboard"


def start_training_run(name: str, run_dir: Path) -> tuple[str, list[TrainerCallback], dict[str, Any]]:
    """What the Trainer gets (its report_to, our callbacks) and what the run records about its tracker run."""
    if name == "none":
        return "none", [], {}
    if name == "tensorboard":
        from transformers.integrations import TensorBoardCallback

        callback = TensorBoardCallback()
        callback.logging_dir = str(run_dir / TENSORBOARD_FOLDER)  # fixed, so that evaluations find it
        return "none", [callback], {"report_to": name, "tensorboard_dir": callback.logging_dir}
    if name == "wandb":
        # This process trains this one run; a resumed run continues its tracker run.
        os.environ.update(WANDB_RUN_ID=wandb_run_id(run_dir), WANDB_RESUME="allow")
        where = {key.lower(): os.environ[f"WANDB_{key.upper()}"] for key in ("project", "entity")
                 if f"WANDB_{key.upper()}" in os.environ}  # fmt: skip
        return name, [], {"report_to": name, "wandb_run_id": os.environ["WANDB_RUN_ID"], **where}
    return name, [], {"report_to": name}


def wandb_run_id(run_dir: Path) -> str:
    """Two variants started in the same second share a folder name, not a path."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


def log_evaluation(tracking: dict[str, Any], step: int, record: dict[str, Any]) -> None:
    """Adds an evaluation result's figures (accuracy, or a dialogue's metrics) to its training run's tracker run (as
    the run recorded it)."""
    name = tracking.get("report_to", "none")
    key = f"eval_{record['mode']}/{record['dataset']}"
    values = {key if metric == "accuracy" else f"{key}/{metric}": record[metric]
              for metric in record.get("metrics", ["accuracy"])}  # fmt: skip
    if name == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=tracking["tensorboard_dir"]) as writer:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
    elif name == "wandb":
        import wandb

        where = {key: tracking[key] for key in ("project", "entity") if key in tracking}  # the training run's
        run = wandb.init(id=tracking["wandb_run_id"], resume="allow", **where)
        run.log({**values, "train/global_step": step})
        run.finish()
    elif name != "none":
        logger.warning("evaluations are not logged to %s (only tensorboard and wandb runs are resumed)", name)
