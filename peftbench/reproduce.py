"""A reproduction study: a preset becomes a list of peftbench commands, run one after another.

    peftbench reproduce --preset cpu-small [--seeds 3] [--dry_run]

Layout of the study folder::

    zero-shot/                      the base model's evaluations (run once for all seeds)
    seed-{s}/results_{method}/      each method's training run and, in its checkpoint, its evaluations
    seed-{s}/analysis-{mode}/       tables, statistics and plots of that seed (peftbench analyze)

Each step is the same command a user would type, run in its own process, so each method's peak
memory is its own. A rerun skips finished parts: training whose run of the same configuration
finished, and (inside `peftbench eval`) every evaluation whose complete result exists; an
interrupted training run resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftbench.config import ZERO_SHOT, RunConfig
from peftbench.errors import TrainingInterrupted, UserError
from peftbench.methods import METHOD_FLAGS, get_method
from peftbench.models import use_local_files_only
from peftbench.presets import EvalPlan, MethodPlan, Preset
from peftbench.protocols import HIRA
from peftbench.runs import find_finished_run, write_atomic

logger = logging.getLogger(__name__)

BASE_SEED = 36  # the specification's seed; --seeds N uses 36, 37, ...
STUDY_TIME_FILE = "study_time.json"

# Runs one peftbench command (arguments after the program name) and returns its exit status.
Executor = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class Step:
    label: str
    argv: tuple[str, ...]  # peftbench arguments: subcommand and flags
    run_config: RunConfig | None = None  # training steps: what identifies a finished run

    @property
    def command(self) -> str:
        return shlex.join(["peftbench", *self.argv])


@dataclass(frozen=True)
class Study:
    preset: Preset
    out: Path
    seeds: tuple[int, ...]
    data_dir: str
    methods: tuple[MethodPlan, ...] = ()  # --methods; empty: the preset's own

    @property
    def plans(self) -> tuple[MethodPlan, ...]:
        return self.methods or self.preset.methods

    def seed_folder(self, seed: int) -> Path:
        return self.out / f"seed-{seed}"

    def results_folder(self, seed: int, method: str) -> Path:
        return self.seed_folder(seed) / f"results_{method}"

    def analysis_folder(self, seed: int, mode: str) -> Path:
        return self.seed_folder(seed) / f"analysis-{mode}"

    @property
    def zero_shot_folder(self) -> Path:
        return self.out / ZERO_SHOT

    def train_settings(self, seed: int, peft_type: str) -> dict[str, Any]:
        """The run's flags: the shared budget (less the method flags this method is not built from), then the
        method's own settings and rate."""
        method = next(m for m in self.plans if m.peft_type == peft_type)
        takes = get_method(peft_type).flags
        shared = {k: v for k, v in self.preset.train_settings.items() if k not in METHOD_FLAGS or k in takes}
        shared = {k: v for k, v in shared.items() if k not in self.dropped_settings(peft_type)}
        return {
            "peft_type": peft_type,
            "model_name": self.preset.model_name,
            "dataset": self.preset.dataset,
            **shared,
            **method.train_settings,
            "lr": method.lr,
            "seed": seed,
            "output_folder": str(self.results_folder(seed, peft_type)),
            "data_dir": self.data_dir,
            "resume": True,  # an interrupted run of this configuration continues instead of starting over
        }

    def dropped_settings(self, peft_type: str) -> dict[str, str]:
        """Shared settings the method refuses (prefix tuning cannot checkpoint) -> why; they change memory,
        not what a step computes, and the plan says so."""
        refuses = get_method(peft_type).refuses
        return {k: why for k, why in refuses.items() if self.preset.train_settings.get(k)}

    def steps(self) -> list[Step]:
        steps = []
        if self.preset.zero_shot:
            target = ["--model_name", self.preset.model_name, "--output_dir", str(self.zero_shot_folder)]
            steps += [self._eval_step(ZERO_SHOT, target, plan) for plan in self.preset.evaluations]
        for seed in self.seeds:
            for method in self.plans:
                settings = self.train_settings(seed, method.peft_type)
                label = f"seed {seed}: {method.peft_type}"
                steps.append(Step(f"{label} training", ("train", *to_flags(settings)), RunConfig(**settings)))
                ckpt = ["--ckpt", str(self.results_folder(seed, method.peft_type))]
                steps += [self._eval_step(label, ckpt, plan) for plan in self.preset.evaluations]
            steps += [self._analysis_step(seed, plan.mode) for plan in self.preset.evaluations]
        return steps

    def method_folders(self, seed: int) -> list[Path]:
        trained = [self.results_folder(seed, m.peft_type) for m in self.plans]
        return ([self.zero_shot_folder] if self.preset.zero_shot else []) + trained

    def _eval_step(self, label: str, target: list[str], plan: EvalPlan) -> Step:
        settings = {
            "dataset": self.preset.benchmarks,
            "eval_mode": plan.mode,
            "max_eval_samples": plan.samples,
            **plan.settings,
            "data_dir": self.data_dir,
        }
        return Step(f"{label} evaluation ({plan.mode})", ("eval", *target, *to_flags(settings)))

    def _analysis_step(self, seed: int, mode: str) -> Step:
        folders = [str(f) for f in self.method_folders(seed)]
        out = str(self.analysis_folder(seed, mode))
        return Step(f"seed {seed}: analysis ({mode})", ("analyze", *folders, "--out", out, "--mode", mode))


def to_flags(settings: dict[str, Any]) -> list[str]:
    """Command-line flags for config fields: a true bool is a bare flag; a false one is left out, or --no-NAME
    where a protocol sets it (default None); None is left out."""
    flags = []
    for name, value in settings.items():
        if value is True:
            flags.append(f"--{name}")
        elif value is False and name in PROTOCOL_BOOLS:
            flags.append(f"--no-{name}")
        elif value is not None and value is not False:
            flags += [f"--{name}", str(value)]
    return flags


PROTOCOL_BOOLS = {name for name, value in HIRA.run_defaults.items() if isinstance(value, bool)}


def seeds_for(count: int) -> tuple[int, ...]:
    if count < 1:
        raise UserError(f"--seeds must be at least 1, got {count}")
    return tuple(range(BASE_SEED, BASE_SEED + count))


def describe(study: Study) -> str:
    """The plan as text: what the preset is, what it costs, where it differs, and every command."""
    preset = study.preset
    lines = [f"# preset {preset.name}: {preset.summary}.", f"# seeds: {', '.join(map(str, study.seeds))}"]
    if preset.cost:
        lines.append(f"# cost: {preset.cost}")
    lines += [f"# learning rate of {m.peft_type}: {m.lr} ({m.lr_source})" for m in study.plans]
    lines += [
        f"# {m.peft_type} trains without --{flag}: {why}"
        for m in study.plans
        for flag, why in study.dropped_settings(m.peft_type).items()
    ]
    lines += [f"# compared with the official code: {d}" for d in preset.differences]
    lines += [step.command for step in study.steps()]
    return "\n".join(lines)


def run_steps(study: Study, execute: Executor) -> None:
    steps = study.steps()
    for number, step in enumerate(steps, 1):
        progress = f"[{number}/{len(steps)}] {step.label}"
        if step.run_config is not None and (run_dir := find_finished_run(step.run_config)) is not None:
            logger.info("%s: skipped, finished run %s", progress, run_dir)
            continue
        logger.info("%s: %s", progress, step.command)
        status = execute(step.argv)
        if status == 130:
            raise TrainingInterrupted(f"{step.label} was interrupted; rerun the same command to continue from there")
        if status != 0:
            raise UserError(
                f"{step.label} failed (exit status {status}; messages above); "
                "a rerun of the same command skips the finished parts"
            )


def check_device(preset: Preset) -> None:
    if preset.needs_gpu and not torch.cuda.is_available():
        raise UserError(
            f"preset {preset.name} needs a CUDA GPU ({preset.cost}); --dry_run prints its commands to run elsewhere"
        )


def execute_in_subprocess(argv: Sequence[str]) -> int:
    """Run a peftbench command in a fresh Python process and wait for it.

    Ctrl-C reaches the child too (same process group); the parent keeps waiting so the child can save
    its checkpoint and exit on its own. SIGTERM sent to the parent alone is passed on to the child.
    """
    with subprocess.Popen([sys.executable, "-m", "peftbench.cli", *argv]) as child:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
        try:
            while True:
                try:
                    return child.wait()
                except KeyboardInterrupt:
                    continue
        finally:
            signal.signal(signal.SIGTERM, previous)


def reproduce(study: Study, execute: Executor = execute_in_subprocess) -> float:
    """Run every step that is not finished yet; returns the study's wall time in seconds, over all invocations."""
    check_device(study.preset)
    if study.preset.offline:
        use_local_files_only()  # inherited by every step's process
    clock = StudyClock(study.out)

    def timed(argv: Sequence[str]) -> int:
        try:
            return execute(argv)
        finally:
            clock.record()

    try:
        run_steps(study, timed)
    finally:  # an interrupted invocation's time counts too
        total = clock.record()
    return total


class StudyClock:
    """The study's wall time on disk (study_time.json), added to after every step: a resumed study reports its
    earlier invocations' time, and an invocation killed outright (SIGKILL, a lost session) loses only the step
    it was running."""

    def __init__(self, out: Path) -> None:
        self.out, self.mark = out, time.perf_counter()

    def record(self) -> float:
        now = time.perf_counter()
        total = add_study_time(self.out, now - self.mark)
        self.mark = now
        return total


def add_study_time(out: Path, seconds: float) -> float:
    """Add seconds to the study's total (study_time.json) and return the new total."""
    path = out / STUDY_TIME_FILE
    total = json.loads(path.read_text(encoding="utf-8"))["wall_time_s"] + seconds if path.exists() else seconds
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"wall_time_s": round(total, 1)}) + "\n")
    return total
