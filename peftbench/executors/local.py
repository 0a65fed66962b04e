"""``--executor local``: the steps run on this machine, one at a time, or ``--workers N`` / one per ``--gpus`` id
at once."""

from __future__ import annotations

import concurrent.futures
import queue
from collections.abc import Callable, Sequence
from pathlib import Path

from peftbench.errors import TrainingInterrupted
from peftbench.executors.base import Outcome, log_path, run_command, run_when_ready
from peftbench.executors.journal import StudyJournal
from peftbench.studies.plan import Step


class LocalExecutor:
    def __init__(self, workers: int = 1, gpus: Sequence[str] = ()) -> None:
        self.workers = len(gpus) or workers
        self.free_gpus: queue.SimpleQueue[str] = queue.SimpleQueue()
        for gpu in gpus:
            self.free_gpus.put(gpu)
        self.gpus = tuple(gpus)

    def run(
        self, steps: list[Step], logs: Path, done: Callable[[Outcome], None], journal: StudyJournal
    ) -> list[Outcome]:
        """Ctrl-C reaches the running steps too (same process group; the driver passes SIGTERM and SIGHUP on):
        each saves its checkpoint, this waits for them, and the study stops."""
        pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="step")
        try:
            return run_when_ready(steps, lambda step: pool.submit(self._run, step, logs), logs, done, self.workers)
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            raise TrainingInterrupted("the study was interrupted; rerun the same command to continue") from None
        finally:
            pool.shutdown(wait=True)

    def _run(self, step: Step, logs: Path) -> int:
        if not self.gpus:
            return run_command(step.argv, str(log_path(logs, step)), {})
        if not step.gpu:  # analysis: no GPU
            return run_command(step.argv, str(log_path(logs, step)), {"CUDA_VISIBLE_DEVICES": ""})
        gpu = self.free_gpus.get()  # one is free: as many threads as GPUs
        try:
            return run_command(step.argv, str(log_path(logs, step)), {"CUDA_VISIBLE_DEVICES": gpu})
        finally:
            self.free_gpus.put(gpu)
