"""``--executor slurm``: each step a Slurm job through submitit, submitted once the steps it needs have finished
(an evaluation starts when its training finishes). Partition, time limit, GPUs and CPUs per job and more sbatch
options come from the study file's ``slurm:`` section or the flags. The driver (``peftbench reproduce``) waits for
the jobs: run it in a terminal multiplexer or as a small job of its own; a rerun skips what finished. Logs go to
``<study>/logs`` and submitit's to ``<study>/slurm``, on the shared filesystem. ``--slurm_cluster local`` uses
submitit's local executor instead (a laptop, a test).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path

from peftbench.errors import TrainingInterrupted, UserError
from peftbench.executors.base import Outcome, forwarded_environment, log_path, run_command, run_when_ready
from peftbench.studies.design import SlurmSettings
from peftbench.studies.plan import Step

CLUSTERS = ("slurm", "local")


class SlurmExecutor:
    def __init__(self, settings: SlurmSettings, cluster: str = "slurm", workers: int | None = None) -> None:
        if cluster not in CLUSTERS:
            raise UserError(f"--slurm_cluster {cluster!r}: choose one of {', '.join(CLUSTERS)}")
        malformed = [option for option in settings.sbatch if not option.startswith("--") or "=" not in option]
        if malformed:
            raise UserError(f"sbatch option {malformed[0]!r}: write it as --name=value, e.g. --account=abc")
        self.settings, self.cluster = settings, cluster
        self.workers = workers or (1 if cluster == "local" else 256)  # jobs in the queue at once

    def run(self, steps: list[Step], logs: Path, done: Callable[[Outcome], None]) -> list[Outcome]:
        try:
            import submitit
        except ImportError:
            raise UserError("--executor slurm needs submitit: pip install 'peftbench[slurm]'") from None
        executor = submitit.AutoExecutor(folder=logs.parent / "slurm", cluster=self.cluster)
        environment = forwarded_environment()
        jobs = []

        def submit(step: Step) -> concurrent.futures.Future[int]:
            executor.update_parameters(**self._parameters(step))
            job = executor.submit(run_command, step.argv, str(log_path(logs, step)), environment)
            jobs.append(job)
            future: concurrent.futures.Future[int] = concurrent.futures.Future()
            threading.Thread(target=_wait, args=(job, future), daemon=True).start()  # never holds the exit
            return future

        try:
            return run_when_ready(steps, submit, logs, done, self.workers)
        except KeyboardInterrupt:
            for job in jobs:
                if not job.done():
                    job.cancel(check=False)
            raise TrainingInterrupted(
                "the study was interrupted and its running jobs cancelled; rerun the same command to continue"
            ) from None

    def _parameters(self, step: Step) -> dict[str, object]:
        settings = self.settings
        parameters: dict[str, object] = {"name": step.id, "timeout_min": settings.time_min,
                                         "cpus_per_task": settings.cpus_per_job}  # fmt: skip
        # submitit keeps parameters from one job to the next: a CPU step asks for no GPU explicitly.
        parameters["gpus_per_node"] = settings.gpus_per_job if step.gpu else 0
        if self.cluster == "slurm":
            extra = dict(option.lstrip("-").split("=", 1) for option in settings.sbatch)
            parameters |= {"slurm_partition": settings.partition, "slurm_additional_parameters": extra}
        return parameters


def _wait(job, future: concurrent.futures.Future[int]) -> None:  # noqa: ANN001
    try:
        future.set_result(job.result())
    except Exception as exc:  # the job failed outside our command (killed, timed out, node lost)
        future.set_exception(exc)
