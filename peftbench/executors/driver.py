"""A study run on an executor: the steps not finished yet, in dependency order, and a summary of how each ended."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from peftbench.executors.base import DONE_BEFORE, FAILED, FINISHED, NOT_RUN, RUNNING, Executor, Outcome, log_path
from peftbench.executors.journal import StudyJournal, driver_lock, private_folder
from peftbench.models.load import use_local_files_only
from peftbench.runs.folders import find_finished_run
from peftbench.studies.plan import Step, Study, StudyClock

logger = logging.getLogger(__name__)


def summary(outcomes: Sequence[Outcome], rerun: str) -> str:
    """What finished, what failed (with its command and log's end), what did not run, and how to go on."""
    counts = {state: sum(o.state == state for o in outcomes) for state in (FINISHED, DONE_BEFORE, FAILED, NOT_RUN)}
    lines = ["study: " + ", ".join(f"{count} {state}" for state, count in counts.items())]
    for outcome in outcomes:
        if outcome.state == FAILED:
            how = "its job ended" if outcome.exit_status is None else f"exit status {outcome.exit_status}"
            lines += [f"FAILED {outcome.step.label} ({how}): {outcome.step.command}",
                      *("    " + line for line in outcome.detail.splitlines())]  # fmt: skip
        elif outcome.state == NOT_RUN:
            lines.append(f"NOT RUN {outcome.step.label}: {outcome.detail}")
    if counts[FAILED] or counts[NOT_RUN]:
        lines.append(f"to run what is missing (finished steps are skipped): {rerun}")
    return "\n".join(lines)


def run_study(study: Study, executor: Executor, rerun: str) -> tuple[list[Outcome], float]:
    """Every step of the study that is not finished yet, on ``executor``; the outcomes in the study's order, a
    summary on stderr, and the study's wall time in seconds over all invocations (``study_time.json``). One driver
    at a time: a second one on the same study folder is refused."""
    if study.design.offline:
        use_local_files_only()  # inherited by every step's process
    with driver_lock(study.out), _interrupted_by_termination():
        return _run_steps(study, executor, rerun)


def _run_steps(study: Study, executor: Executor, rerun: str) -> tuple[list[Outcome], float]:
    steps, journal = study.steps(), StudyJournal(study.out)
    private_folder(study.log_folder)
    before = _done_before(steps, journal)
    clock = StudyClock(study.out)
    ended_so_far = [len(before)]

    def done(outcome: Outcome) -> None:
        journal.ended(outcome.step.id, outcome.step.command, outcome.state, outcome.exit_status)
        clock.record()
        ended_so_far[0] += 1
        where = f"; log {log_path(study.log_folder, outcome.step)}" if outcome.state != NOT_RUN else ""
        logger.info("[%d/%d] %s: %s in %.1f s%s", ended_so_far[0], len(steps), outcome.step.label, outcome.state,
                    outcome.seconds, where)  # fmt: skip

    for step in steps:
        if step.id in before:
            logger.info("%s: skipped, it finished before", step.label)
    try:
        outcomes = executor.run([s for s in steps if s.id not in before], study.log_folder, done, journal)
    finally:  # an interrupted invocation's time counts too
        total = clock.record()
    by_id = {outcome.step.id: outcome for outcome in outcomes}
    ordered = [by_id.get(step.id) or Outcome(step, DONE_BEFORE) for step in steps]
    print(summary(ordered, rerun), file=sys.stderr)
    return ordered, total


def _done_before(steps: list[Step], journal: StudyJournal) -> set[str]:
    """Trainings whose run of the same configuration finished (whoever ran it: an earlier driver, an orphaned
    job); evaluations and analyses a driver saw finish with the same command after everything they read was
    done, when all they read was done before too (a step whose inputs are redone is redone)."""
    before: set[str] = set()
    for step in steps:  # dependency order: a step's needs come first
        if step.run_config is not None:
            done = find_finished_run(step.run_config) is not None
        else:
            done = all(need in before for need in step.needs) and journal.finished_after_needs(
                step.id, step.command, step.needs
            )
        if done:
            before.add(step.id)
    return before


@contextmanager
def _interrupted_by_termination() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a login node's reaper) and SIGHUP (a closed terminal) stop the study as
    Ctrl-C does: running local steps are told to stop (trainings save a checkpoint) and cluster jobs cancelled."""

    def interrupt(signum: int, frame: object) -> None:
        for child in list(RUNNING):  # local steps; Ctrl-C reaches them through the terminal's process group
            child.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
