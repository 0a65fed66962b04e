"""Running peftbench as a user does, in subprocesses: train_hira.py alone or under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peftbench.train.engines import free_port

ROOT = Path(__file__).resolve().parents[2]


def flags(model: Path, data_dir: str, **overrides: object) -> list[str]:
    settings = {"peft_type": "lora", "model_name": model, "r_ab": 4, "batch": 4, "lr": 1e-2, "max_steps": 40,
                "max_train_samples": 400, "val_set_size": 0, "eval_strategy": "steps", "eval_steps": 2,
                "logging_steps": 1, "data_dir": data_dir, "output_folder": "results"}  # fmt: skip
    settings.update(overrides)
    return [f"--{key}={value}" for key, value in settings.items() if value is not None]


def train_hira(args: list[str], cwd: Path, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train_hira.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr


def torchrun(
    command: list[str], cwd: Path, processes: int = 2, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N`` of a script and its arguments (``-m module`` too), on CPU: gloo."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                f"--master_port={free_port()}"]  # fmt: skip
    return subprocess.run([*launcher, *command], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})  # fmt: skip


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "output.jsonl").read_text().splitlines()]


def losses(run_dir: Path, step: int) -> list[tuple[int, float]]:
    history = json.loads((run_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


class InProcess:
    """An executor that runs each step's command in this process, one after another: the fast tests' way."""

    def __init__(self, execute: object = None) -> None:
        from peftbench import cli

        self.execute = execute or cli.main

    def run(self, steps, logs, done, journal):  # noqa: ANN001, ANN201
        from peftbench.executors.base import FINISHED, ended, log_path, not_run

        outcomes = {}
        for step in steps:  # in dependency order
            failed = [n for n in step.needs if n in outcomes and outcomes[n].state != FINISHED]
            if failed:
                outcomes[step.id] = not_run(step, failed)
            else:
                began = time.perf_counter()
                status = self.execute(list(step.argv))
                outcomes[step.id] = ended(step, status, time.perf_counter() - began, log_path(logs, step))
            done(outcomes[step.id])
        return list(outcomes.values())
