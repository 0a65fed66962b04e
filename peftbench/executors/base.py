"""The parts every executor shares: a step's outcome, its command in a process of its own, its log, and a wait
for the steps it needs."""

from __future__ import annotations

import concurrent.futures
import graphlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from peftbench.executors.journal import StudyJournal
from peftbench.executors.parent import PARENT_VARIABLE
from peftbench.studies.plan import Step

logger = logging.getLogger(__name__)
FINISHED, DONE_BEFORE, FAILED, NOT_RUN = "finished", "finished before", "failed", "not run"
LOG_TAIL_LINES = 15
# Environment a step needs wherever it runs: peftbench's and the libraries' settings (caches, offline, trackers).
FORWARDED_PREFIXES = ("PEFTBENCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "WANDB_", "MLFLOW_", "TRACKIO_")


@dataclass(frozen=True)
class Outcome:
    step: Step
    state: str  # FINISHED, DONE_BEFORE, FAILED or NOT_RUN
    exit_status: int | None = None
    seconds: float = 0.0
    detail: str = ""  # why it did not run, or the end of its log


class StepLost(Exception):
    """The engine ended a step outside its command: cancelled, timed out, out of memory, never started."""


class Executor(Protocol):
    def run(
        self, steps: list[Step], logs: Path, done: Callable[[Outcome], None], journal: StudyJournal
    ) -> list[Outcome]:
        """Run the steps (each after the steps it needs), calling ``done`` as each ends; one outcome per step.
        Jobs that outlive their driver are recorded in the journal, and followed again by the next driver."""


def log_path(logs: Path, step: Step) -> Path:
    return logs / f"{step.id}.log"


def forwarded_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith(FORWARDED_PREFIXES)}


RUNNING: set[subprocess.Popen] = set()  # this process's running steps, for passing a signal on


def run_command(argv: Sequence[str], log: str, environment: dict[str, str]) -> int:
    """One peftbench command in a fresh Python process, its output appended to ``log``; its exit status.
    (Module-level: Ray runs it in its workers, and a Slurm job through peftbench.executors.job.)"""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(['peftbench', *argv])}\n")
        out.flush()
        command = [sys.executable, "-m", "peftbench.cli", *argv]
        environment = {**os.environ, **environment, PARENT_VARIABLE: str(os.getpid())}  # see executors.parent
        with subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment) as child:
            RUNNING.add(child)
            try:
                return child.wait()
            finally:
                RUNNING.discard(child)


def ended(step: Step, status: int, seconds: float, log: Path) -> Outcome:
    if status == 0:
        return Outcome(step, FINISHED, status, seconds)
    return Outcome(step, FAILED, status, seconds, log_tail(log))


def log_tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        return f"(no log at {log})"


def not_run(step: Step, failed: Sequence[str]) -> Outcome:
    return Outcome(step, NOT_RUN, detail=f"needs {', '.join(failed)}, which did not finish")


def run_when_ready(
    steps: list[Step], start: Callable[[Step], concurrent.futures.Future[int]], logs: Path,
    done: Callable[[Outcome], None], limit: int,
) -> list[Outcome]:  # fmt: skip
    """Start each step once the steps it needs have finished, at most ``limit`` at once (``start`` returns a future
    of its exit status); a step whose needs did not finish is not run. For the executors that run steps from this
    process (local, Slurm)."""
    by_id = {step.id: step for step in steps}
    order = graphlib.TopologicalSorter({step.id: [n for n in step.needs if n in by_id] for step in steps})
    order.prepare()
    outcomes: dict[str, Outcome] = {}
    ready: list[Step] = []
    running: dict[concurrent.futures.Future[int], tuple[Step, float]] = {}
    while order.is_active():
        ready += [by_id[step_id] for step_id in order.get_ready()]
        while ready and len(running) < limit:
            step = ready.pop(0)
            failed = [n for n in step.needs if n in outcomes and outcomes[n].state != FINISHED]
            if failed:
                outcomes[step.id] = not_run(step, failed)
                done(outcomes[step.id])
                order.done(step.id)
                continue
            logger.info("started %s: %s", step.label, step.command)
            try:
                running[start(step)] = (step, time.perf_counter())
            except Exception as exc:  # the engine refused the job (a busy scheduler, a limit): this step failed
                outcomes[step.id] = Outcome(step, FAILED, None, 0.0, f"could not start: {type(exc).__name__}: {exc}")
                done(outcomes[step.id])
                order.done(step.id)
        if not running:
            continue
        finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in finished:
            step, began = running.pop(future)
            try:
                status = future.result()
            except Exception as exc:  # the engine lost the job: a failure of this step, not of the study
                why = str(exc) if isinstance(exc, StepLost) else f"{type(exc).__name__}: {exc}"
                detail = f"{why}\n{log_tail(log_path(logs, step))}" if log_path(logs, step).exists() else why
                outcomes[step.id] = Outcome(step, FAILED, None, time.perf_counter() - began, detail)
            else:
                outcomes[step.id] = ended(step, status, time.perf_counter() - began, log_path(logs, step))
            done(outcomes[step.id])
            order.done(step.id)
    return [outcomes[step.id] for step in steps]
