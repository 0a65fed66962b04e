"""A study run: a study design becomes a list of peftbench commands with their dependencies, run by an executor.

    peftbench reproduce cpu-small [--seeds 3] [--dry_run] [--executor local|ray|slurm]

Layout of the study folder::

    zero-shot/                      the base model's evaluations (run once for all seeds)
    seed-{s}/results_{method}/      each method's training run and, in its checkpoint, its evaluations
    seed-{s}/analysis-{mode}/       tables, statistics and plots of that seed (peftbench analyze)
    logs/                           each step's output

Each step is the same command a user would type, run in its own process (so each method's peak memory is its
own) wherever the executor puts it: an evaluation runs after its training, an analysis after its evaluations.
A rerun skips finished parts: training whose run of the same configuration finished, and (inside
`peftbench eval`) every evaluation whose complete result exists; an interrupted training run resumes from its
newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftbench.config import ZERO_SHOT, RunConfig
from peftbench.data.protocols import DEFAULT_PROTOCOL
from peftbench.errors import UserError
from peftbench.published import published_rows
from peftbench.runs.records import write_atomic
from peftbench.studies.design import EvalPlan, MethodPlan, StudyDesign

logger = logging.getLogger(__name__)

BASE_SEED = 36  # the specification's seed; --seeds N uses 36, 37, ...
STUDY_TIME_FILE = "study_time.json"


@dataclass(frozen=True)
class Step:
    id: str  # unique in the study, and the name of its log file
    label: str
    argv: tuple[str, ...]  # peftbench arguments: subcommand and flags
    needs: tuple[str, ...] = ()  # the steps it runs after, by id
    gpu: bool = False  # asks its executor for one GPU
    run_config: RunConfig | None = None  # training steps: what identifies a finished run

    @property
    def command(self) -> str:
        return shlex.join(["peftbench", *self.argv])


@dataclass(frozen=True)
class Study:
    design: StudyDesign
    out: Path
    seeds: tuple[int, ...]
    data_dir: str
    methods: tuple[MethodPlan, ...] = ()  # --methods; empty: the design's own
    report_to: str = "none"  # the tracker training runs and evaluations log to

    @property
    def plans(self) -> tuple[MethodPlan, ...]:
        return self.methods or self.design.methods

    def seed_folder(self, seed: int) -> Path:
        return self.out / f"seed-{seed}"

    def results_folder(self, seed: int, method: str) -> Path:
        return self.seed_folder(seed) / f"results_{method}"

    def analysis_folder(self, seed: int, mode: str) -> Path:
        return self.seed_folder(seed) / f"analysis-{mode}"

    @property
    def zero_shot_folder(self) -> Path:
        return self.out / ZERO_SHOT

    @property
    def log_folder(self) -> Path:
        return self.out / "logs"

    def plan(self, name: str) -> MethodPlan:
        return next(plan for plan in self.plans if plan.name == name)

    def train_settings(self, seed: int, name: str) -> dict[str, Any]:
        """The run's flags: the design's settings for the method, then where and how this study runs it."""
        tracking = {"report_to": self.report_to} if self.report_to != "none" else {}
        return {
            **self.design.run_settings(self.plan(name)),
            "seed": seed,
            "output_folder": str(self.results_folder(seed, name)),
            "data_dir": self.data_dir,
            **tracking,
            "resume": True,  # an interrupted run of this configuration continues instead of starting over
        }

    def steps(self) -> list[Step]:
        steps, gpu = [], self.design.needs_gpu
        if self.design.zero_shot:
            target = ["--model_name", self.design.model_name, "--output_dir", str(self.zero_shot_folder)]
            protocol = self.design.train_settings.get("protocol", DEFAULT_PROTOCOL)
            target += ["--protocol", protocol] if protocol != DEFAULT_PROTOCOL else []  # the trained runs' prompts
            steps += [self._eval_step(ZERO_SHOT, ZERO_SHOT, target, plan, ()) for plan in self.design.evaluations]
        for seed in self.seeds:
            for method in self.plans:
                settings = self.train_settings(seed, method.name)
                label, train_id = f"seed {seed}: {method.name}", f"seed-{seed}.{method.name}.train"
                steps.append(Step(train_id, f"{label} training", ("train", *to_flags(settings)), (), gpu,
                                  RunConfig(**settings)))  # fmt: skip
                ckpt = ["--ckpt", str(self.results_folder(seed, method.name))]
                steps += [self._eval_step(f"seed-{seed}.{method.name}", label, ckpt, plan, (train_id,))
                          for plan in self.design.evaluations]  # fmt: skip
            steps += [self._analysis_step(seed, plan.mode) for plan in self.design.evaluations]
        return steps

    def method_folders(self, seed: int) -> list[Path]:
        trained = [self.results_folder(seed, m.name) for m in self.plans]
        return ([self.zero_shot_folder] if self.design.zero_shot else []) + trained

    def _eval_id(self, owner: str, mode: str) -> str:
        return f"{owner}.eval-{mode}"

    def _eval_step(self, owner: str, label: str, target: list[str], plan: EvalPlan, needs: tuple[str, ...]) -> Step:
        tracking = {"report_to": self.report_to} if self.report_to != "none" and owner != ZERO_SHOT else {}
        settings = {
            "dataset": self.design.benchmarks,
            "eval_mode": plan.mode,
            "max_eval_samples": plan.samples,
            **plan.settings,
            **self.design.pins(),
            "data_dir": self.data_dir,
            **tracking,
        }
        argv = ("eval", *target, *to_flags(settings))
        return Step(self._eval_id(owner, plan.mode), f"{label} evaluation ({plan.mode})", argv, needs,
                    self.design.needs_gpu)  # fmt: skip

    def _analysis_step(self, seed: int, mode: str) -> Step:
        folders = [str(f) for f in self.method_folders(seed)]
        out = str(self.analysis_folder(seed, mode))
        owners = ([ZERO_SHOT] if self.design.zero_shot else []) + [f"seed-{seed}.{m.name}" for m in self.plans]
        needs = tuple(self._eval_id(owner, mode) for owner in owners)
        return Step(f"seed-{seed}.analysis-{mode}", f"seed {seed}: analysis ({mode})",
                    ("analyze", *folders, "--out", out, "--mode", mode), needs)  # fmt: skip


def to_flags(settings: dict[str, Any]) -> list[str]:
    """Command-line flags for config fields: a true bool is a bare flag; a false one is left out, or --no-NAME
    where a protocol sets it (default None); None is left out."""
    flags = []
    for name, value in settings.items():
        if value is True:
            flags.append(f"--{name}")
        elif value is False and name in TRI_STATE_BOOLS:
            flags.append(f"--no-{name}")
        elif value is not None and value is not False:
            flags += [f"--{name}", str(value)]
    return flags


# Bool fields left to a protocol or to "auto" (default None): false needs --no-NAME.
TRI_STATE_BOOLS = {f.name for f in dataclasses.fields(RunConfig) if f.default is None and "bool" in str(f.type)}


def seeds_for(count: int) -> tuple[int, ...]:
    if count < 1:
        raise UserError(f"--seeds must be at least 1, got {count}")
    return tuple(range(BASE_SEED, BASE_SEED + count))


def describe(study: Study) -> str:
    """The plan as text: what the study is, what it costs, where it differs, and every command."""
    design = study.design
    lines = [f"# preset {design.name}: {design.summary}.", f"# seeds: {', '.join(map(str, study.seeds))}"]
    if design.cost:
        lines.append(f"# cost: {design.cost}")
    lines += [f"# learning rate of {m.name}: {m.lr} ({m.lr_source})" for m in study.plans]
    lines += [
        f"# {m.name} trains without --{flag}: {why}"
        for m in study.plans
        for flag, why in design.dropped_settings(m.peft_type).items()
    ]
    lines += [f"# compared with the official code: {d}" for d in design.differences]
    lines += [f"# note: {note}" for note in design.notes]
    lines += _published_lines(design)
    lines += [step.command for step in study.steps()]
    return "\n".join(lines)


def _published_lines(design: StudyDesign) -> list[str]:
    """Each published row the study reproduces, with its figures and the run (method) that answers it."""
    if design.published is None:
        return []
    source, model = design.published.source, design.published.model
    table = published_rows(source, model)
    lines = []
    for ours, (method, rank) in design.published.rows.items():
        for row in (r for r in table if (r.method, r.rank) == (method, rank)):
            figures = ", ".join(f"{key} {value}" for key, value in row.scores.items())
            average = f", average {row.average}" if row.average is not None else ""
            lines.append(f"# published {source}: {model} {row.method}{f' r{rank}' if rank else ''}: "
                         f"{figures}{average} <- run {ours}")  # fmt: skip
    return lines


def check_device(design: StudyDesign) -> None:
    if design.needs_gpu and not torch.cuda.is_available():
        raise UserError(
            f"study {design.name} needs a CUDA GPU ({design.cost}); --dry_run prints its commands to run elsewhere, "
            "--executor ray or slurm runs them on a cluster's GPUs"
        )


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
