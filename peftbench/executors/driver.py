"""A study run on an executor: the steps not finished yet, in dependency order, and a summary of how each ended."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from peftbench.executors.base import DONE_BEFORE, FAILED, FINISHED, NOT_RUN, Executor, Outcome, log_path
from peftbench.models.load import use_local_files_only
from peftbench.runs.folders import find_finished_run
from peftbench.studies.plan import Study, StudyClock

logger = logging.getLogger(__name__)


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
