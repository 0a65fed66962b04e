"""A tiny study file and a graph of steps, for the tests of studies and executors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from peftbench.studies.plan import Step

TINY_STUDY = """\
summary: a tiny study
model: smollm2-135m
budget: {max_train_samples: 16, r_ab: 4}
methods:
- {method: lora, lr: 3e-4, lr_source: LLM-Adapters}
- {method: ia3, lr: 3e-3, lr_source: T-Few}
evaluations:
- {mode: loglik, samples: 4}
"""


def step_graph() -> list[Step]:
    """Two trainings, their evaluations and an analysis of both; b's training has a bad flag."""
    return [Step("a.train", "a training", ("train",)), Step("b.train", "b training", ("train", "--bad")),
            Step("a.eval", "a evaluation", ("eval",), ("a.train",)),
            Step("b.eval", "b evaluation", ("eval",), ("b.train",)),
            Step("analysis", "analysis", ("analyze",), ("a.eval", "b.eval"))]  # fmt: skip


def reproduce_command(args: list[str], out: Path, data_dir: str) -> list[str]:
    return [sys.executable, "-m", "peftbench.cli", "reproduce", *args, "--out", str(out), "--page",
            str(out / "page.md"), "--data_dir", data_dir]  # fmt: skip


def study_environment(out: Path, **extra: str) -> dict[str, str]:
    # Ray keeps its authentication token in the home folder: a temporary one.
    return {**os.environ, "HOME": str(out), **extra}


def reproduce(args: list[str], out: Path, data_dir: str, **extra: str) -> subprocess.CompletedProcess:
    """``peftbench reproduce`` as a user runs it, into ``out``."""
    return subprocess.run(reproduce_command(args, out, data_dir), capture_output=True, text=True, timeout=1200,
                          env=study_environment(out, **extra))  # fmt: skip


def accuracies(out: Path) -> dict[tuple[str, str], float]:
    """(method, benchmark) -> accuracy, from the study's results page summary."""
    summary = json.loads((out / "page" / "summary.json").read_text())
    return {(c["method"], c["dataset"]): c["mean"] for e in summary["evaluations"] for c in e["cells"]}


def long_training_study(model: Path, what: str) -> str:
    """A study of one training long enough (300 steps, a checkpoint every 10) to be interrupted while it runs;
    dropout 0, so a resumed run ends with an uninterrupted run's weights."""
    return f"""\
summary: {what}
model: {model}
zero_shot: false
budget: {{max_train_samples: 400, batch: 4, max_steps: 300, val_set_size: 0, eval_strategy: steps, eval_steps: 10,
          logging_steps: 1, r_ab: 4, target_modules: q_proj, lora_dropout: 0.0}}
methods:
- {{method: lora, lr: 1e-2, lr_source: test}}
benchmarks: boolq
evaluations:
- {{mode: loglik, samples: 4}}
"""
