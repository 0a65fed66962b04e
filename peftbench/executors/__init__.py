"""Where a study's steps run: one interface, one small module per engine.

- ``local`` (default): this machine, one step at a time; ``--workers N`` runs N at once, ``--gpus 0,1,2,3`` one
  step per GPU at once (each sees its GPU as ``CUDA_VISIBLE_DEVICES``).
- ``ray``: each step a Ray task asking for what it needs (one GPU for training and evaluation of a GPU study);
  a step receives the results of the steps it needs, so Ray starts it when they finish.
- ``slurm``: each step a Slurm job through submitit, submitted when the steps it needs have finished; with
  ``--slurm_cluster local`` submitit's local executor runs the jobs on this machine.

Every step is an ordinary ``peftbench train|eval|analyze`` command in its own process, its output in
``<study>/logs/<step>.log``, wherever it runs (the study folder must be on a filesystem every node sees). A step
whose command fails is reported with its command and its log's last lines; the steps that need it do not run,
the others go on, and the study ends with a summary and the command that runs what is missing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
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
from typing import Any, Protocol

from peftbench.errors import UserError
from peftbench.models import use_local_files_only
from peftbench.reproduce import Step, Study, StudyClock
from peftbench.runs import find_finished_run
from peftbench.studies import SlurmSettings

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


class Executor(Protocol):
    def run(self, steps: list[Step], logs: Path, done: Callable[[Outcome], None]) -> list[Outcome]:
        """Run the steps (each after the steps it needs), calling ``done`` as each ends; one outcome per step."""


def log_path(logs: Path, step: Step) -> Path:
    return logs / f"{step.id}.log"


def forwarded_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith(FORWARDED_PREFIXES)}


RUNNING: set[subprocess.Popen] = set()  # this process's running steps, for passing a signal on


def run_command(argv: Sequence[str], log: str, environment: dict[str, str]) -> int:
    """One peftbench command in a fresh Python process, its output appended to ``log``; its exit status.
    (Module-level: Ray and submitit run it in their workers, with their Python.)"""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(['peftbench', *argv])}\n")
        out.flush()
        command = [sys.executable, "-m", "peftbench.cli", *argv]
        with subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **environment}
        ) as child:
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
    process (local, submitit)."""
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
                outcomes[step.id] = Outcome(
                    step, FAILED, -1, time.perf_counter() - began, f"{type(exc).__name__}: {exc}"
                )
            else:
                outcomes[step.id] = ended(step, status, time.perf_counter() - began, log_path(logs, step))
            done(outcomes[step.id])
            order.done(step.id)
    return [outcomes[step.id] for step in steps]


def summary(outcomes: Sequence[Outcome], rerun: str) -> str:
    """What finished, what failed (with its command and log's end), what did not run, and how to go on."""
    counts = {state: sum(o.state == state for o in outcomes) for state in (FINISHED, DONE_BEFORE, FAILED, NOT_RUN)}
    lines = ["study: " + ", ".join(f"{count} {state}" for state, count in counts.items())]
    for outcome in outcomes:
        if outcome.state == FAILED:
            lines += [f"FAILED {outcome.step.label} (exit status {outcome.exit_status}): {outcome.step.command}",
                      *("    " + line for line in outcome.detail.splitlines())]  # fmt: skip
        elif outcome.state == NOT_RUN:
            lines.append(f"NOT RUN {outcome.step.label}: {outcome.detail}")
    if counts[FAILED] or counts[NOT_RUN]:
        lines.append(f"to run what is missing (finished steps are skipped): {rerun}")
    return "\n".join(lines)


def run_study(study: Study, executor: Executor, rerun: str) -> tuple[list[Outcome], float]:
    """Every step of the study that is not finished yet, on ``executor``; the outcomes in the study's order, a
    summary on stderr, and the study's wall time in seconds over all invocations (``study_time.json``)."""
    if study.design.offline:
        use_local_files_only()  # inherited by every step's process
    steps = study.steps()
    before = {s.id for s in steps if s.run_config is not None and find_finished_run(s.run_config) is not None}
    clock = StudyClock(study.out)
    ended_so_far = [len(before)]

    def done(outcome: Outcome) -> None:
        clock.record()
        ended_so_far[0] += 1
        where = f"; log {log_path(study.log_folder, outcome.step)}" if outcome.state != NOT_RUN else ""
        logger.info("[%d/%d] %s: %s in %.1f s%s", ended_so_far[0], len(steps), outcome.step.label, outcome.state,
                    outcome.seconds, where)  # fmt: skip

    for step in steps:
        if step.id in before:
            logger.info("%s: skipped, its run finished before", step.label)
    try:
        outcomes = executor.run([s for s in steps if s.id not in before], study.log_folder, done)
    finally:  # an interrupted invocation's time counts too
        total = clock.record()
    by_id = {outcome.step.id: outcome for outcome in outcomes}
    ordered = [by_id.get(step.id) or Outcome(step, DONE_BEFORE) for step in steps]
    print(summary(ordered, rerun), file=sys.stderr)
    return ordered, total


def choose_executor(
    kind: str, workers: int | None, gpus: str | None, ray_address: str | None, slurm: SlurmSettings,
    slurm_flags: dict[str, Any], slurm_cluster: str, gpu_study: bool,
) -> Executor:  # fmt: skip
    """The executor of ``--executor``; Slurm's settings are the study file's, overridden by the flags given."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if kind == "local" and gpu_study and (workers or 1) > 1 and not gpus:
        raise UserError(f"--workers {workers} would put {workers} GPU steps on one GPU, each planning for all of "
                        "its memory; give one GPU per step: --gpus 0,1,...")  # fmt: skip
    if kind == "ray":
        from peftbench.executors.ray_cluster import RayExecutor

        return RayExecutor(ray_address, workers)
    if kind == "slurm":
        from peftbench.executors.slurm import SlurmExecutor

        given = {k: v for k, v in slurm_flags.items() if v not in (None, [])}
        settings = dataclasses.replace(slurm, **{k: v for k, v in given.items() if k != "sbatch"})
        settings = dataclasses.replace(settings, sbatch=(*settings.sbatch, *given.get("sbatch", ())))
        return SlurmExecutor(settings, slurm_cluster, workers)
    from peftbench.executors.local import LocalExecutor

    return LocalExecutor(workers or 1, [gpu.strip() for gpu in (gpus or "").split(",") if gpu.strip()])
