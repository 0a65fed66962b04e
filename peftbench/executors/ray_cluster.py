"""``--executor ray``: each step a Ray task that asks for what it needs (``num_gpus=1`` for a GPU step, one CPU
otherwise). A task is given the outcomes of the steps it needs, so Ray starts it when they have finished: the
dependency graph is just the calls. ``--ray_address`` joins a running cluster (``ray start --head`` on one node,
``ray start --address=...`` on the others); without it a local cluster starts for the study, listening on
localhost only and without the dashboard, whose job API has no authentication.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from peftbench.errors import UserError
from peftbench.executors.base import (
    FAILED,
    FINISHED,
    Outcome,
    ended,
    forwarded_environment,
    log_path,
    not_run,
    run_command,
)
from peftbench.executors.journal import StudyJournal
from peftbench.studies.plan import Step


def _run_task(step: Step, log: str, environment: dict[str, str], *needed: Outcome) -> Outcome:
    """The task: runs the step unless a step it needs did not finish."""
    failed = [outcome.step.id for outcome in needed if outcome.state != FINISHED]
    if failed:
        return not_run(step, failed)
    began = time.perf_counter()
    status = run_command(step.argv, log, environment)
    return ended(step, status, time.perf_counter() - began, Path(log))


class RayExecutor:
    def __init__(self, address: str | None = None, cpus: int | None = None) -> None:
        self.address, self.cpus = address, cpus

    def run(
        self, steps: list[Step], logs: Path, done: Callable[[Outcome], None], journal: StudyJournal
    ) -> list[Outcome]:
        """A driver that dies takes its tasks with it (Ray kills the tasks of a dead driver, and their steps get
        SIGTERM: trainings save a checkpoint); a rerun submits again what did not finish."""
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'peftbench[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
            self._connect(ray)
            for signum, handler in handlers.items():  # ray.init replaces SIGTERM's: the driver's stops the study
                signal.signal(signum, handler)
        try:
            task = ray.remote(_run_task)
            environment = forwarded_environment()
            references = {}
            for step in steps:  # in dependency order: a step's needs come before it
                needed = [references[n] for n in step.needs if n in references]
                resources = {"num_gpus": 1 if step.gpu else 0, "num_cpus": 1, "name": step.id, "max_retries": 0}
                sees = environment if step.gpu else {**environment, "CUDA_VISIBLE_DEVICES": ""}  # Ray leaves it set
                references[step.id] = task.options(**resources).remote(step, str(log_path(logs, step)), sees, *needed)
            outcomes = {}
            pending = {reference: step_id for step_id, reference in references.items()}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                step_id = pending.pop(ready[0])
                outcomes[step_id] = self._outcome(ray, ready[0], next(s for s in steps if s.id == step_id), outcomes)
                done(outcomes[step_id])
            return [outcomes[step.id] for step in steps]
        finally:
            if started_here:
                ray.shutdown()

    def _connect(self, ray) -> None:  # noqa: ANN001
        try:
            if self.address is not None:
                ray.init(address=self.address, log_to_driver=False)
                return
            # A cluster of this machine alone: on localhost, no dashboard (Ray's job and dashboard APIs let anyone
            # who reaches them run code, and the dashboard listens on every interface by default).
            ray.init(num_cpus=self.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
            raise UserError(f"cannot start or join {where}: {exc}") from None

    @staticmethod
    def _outcome(ray, reference, step: Step, outcomes: dict[str, Outcome]) -> Outcome:  # noqa: ANN001
        try:
            return ray.get(reference)
        except Exception as exc:  # the task died, or Ray did not run it because a task it needs died
            failed = [n for n in step.needs if n in outcomes and outcomes[n].state != FINISHED]
            return not_run(step, failed) if failed else Outcome(step, FAILED, None, 0.0, str(exc)[:2000])
