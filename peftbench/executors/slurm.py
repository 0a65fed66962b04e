"""``--executor slurm``: each step a Slurm batch job, submitted with ``sbatch`` once the steps it needs have
finished (an evaluation starts when its training finishes), and followed with ``squeue``/``scontrol`` (``sacct``
where the cluster keeps accounting) to its end.

- **Requests.** Partition, time, CPUs, memory and GPUs per job come from the study file's ``slurm:`` section or
  the flags; any other ``sbatch`` option from ``--slurm_sbatch``. An option that asks for something a setting also
  gives is an error, never silently overridden; without the setting, the option's value is the request.
- **Jobs that can never start** (a pending reason such as ``PartitionConfig``: more than a node or the partition
  has) are cancelled within a minute and reported with Slurm's reason and the request.
- **Preemption.** Jobs are submitted with ``--requeue``; a requeued training (SIGTERM, then the job again) saves a
  checkpoint and resumes from it in the same run folder, and the driver follows the job until it really ends.
- **A driver that dies** leaves its jobs running; the next driver finds them in the study's journal and follows
  them instead of submitting them again.
- **Credentials** reach the jobs through the environment ``sbatch`` passes on (``--export=ALL``, Slurm's
  default), never through a file: the job scripts hold only the command, in a folder only the user can read.

The driver (``peftbench reproduce``) waits for the jobs: run it in a terminal multiplexer or as a small job of its
own. Job scripts, Slurm's output and exit statuses go to ``<study>/slurm``, the steps' logs to ``<study>/logs``;
the study folder must be on a filesystem every node sees.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import TrainingInterrupted, UserError
from peftbench.executors.base import Outcome, StepLost, log_path, log_tail, run_when_ready
from peftbench.executors.journal import PRIVATE_FILE, StudyJournal, private_folder
from peftbench.executors.slurm_queue import JobState, NoAnswer, SlurmQueue, cancel, submit
from peftbench.studies.design import SlurmSettings
from peftbench.studies.plan import Step

logger = logging.getLogger(__name__)

ENGINE = "slurm"
POLL_S = 5.0
NEVER_STARTS_GRACE_S = 20.0
NO_ANSWER_REMINDER_S = 600.0
DEFAULTS = {"time_min": 24 * 60, "gpus_per_job": 1, "cpus_per_job": 8}
# Each setting and the sbatch options that ask for the same thing (--gres only when it names GPUs).
SAME_REQUEST = {"partition": ("partition",), "time_min": ("time",), "cpus_per_job": ("cpus-per-task", "cpus-per-gpu"),
                "mem_gb_per_job": ("mem", "mem-per-cpu", "mem-per-gpu"),
                "gpus_per_job": ("gpus", "gpus-per-node", "gpus-per-task", "gpus-per-socket", "gres")}  # fmt: skip
# Options peftbench gives itself, or that would hide the job from the driver (another cluster, a test, a hold).
OWN_OPTIONS = ("job-name", "output", "error", "open-mode", "parsable", "wrap", "export", "array", "clusters", "wait",
               "test-only", "hold")  # fmt: skip


def _asks_for(name: str, value: str | None) -> str | None:
    """The setting an sbatch option asks for, if any."""
    for setting, names in SAME_REQUEST.items():
        if name in names and (name != "gres" or (value or "").startswith("gpu")):
            return setting
    return None


@dataclass(frozen=True)
class Requests:
    """Every step's sbatch options: the settings given (or defaulted) and the user's own options."""

    settings: SlurmSettings
    options: dict[str, str | None]  # the user's, by name (None: a bare flag such as --exclusive)

    @classmethod
    def of(cls, settings: SlurmSettings) -> Requests:
        options: dict[str, str | None] = {}
        for option in settings.sbatch:
            name, equals, value = option[2:].partition("=")
            if not option.startswith("--") or not name or any(c.isspace() for c in name):
                raise UserError(f"sbatch option {option!r}: write it as --name=value, e.g. --account=abc")
            if name in OWN_OPTIONS:
                raise UserError(f"sbatch option --{name}: peftbench sets it, or needs it unset, for each job")
            options[name] = value if equals else None
        for name, value in options.items():
            setting = _asks_for(name, value)
            if setting is not None and getattr(settings, setting) is not None:
                raise UserError(
                    f"slurm {setting} {getattr(settings, setting)} and the sbatch option --{name} ask for the "
                    f"same thing; give one of them (--slurm_{setting} or --slurm_sbatch)"
                )
        return cls(settings, options)

    def lines(self, step: Step) -> list[str]:
        """The step's sbatch options. A CPU step (analysis) asks for no GPU, the user's GPU options included."""
        wanted = {setting: getattr(self.settings, setting) for setting in SAME_REQUEST}
        wanted = {k: v if v is not None else DEFAULTS.get(k) for k, v in wanted.items()}
        options = {n: v for n, v in self.options.items() if step.gpu or _asks_for(n, v) != "gpus_per_job"}
        taken = {_asks_for(name, value) for name, value in options.items()}
        mine = {"partition": ("partition", wanted["partition"]), "time_min": ("time", wanted["time_min"]),
                "cpus_per_job": ("cpus-per-task", wanted["cpus_per_job"]),
                "mem_gb_per_job": ("mem", f"{wanted['mem_gb_per_job']}G" if wanted["mem_gb_per_job"] else None),
                "gpus_per_job": ("gpus-per-node", wanted["gpus_per_job"] if step.gpu else None)}  # fmt: skip
        lines = [f"--{name}={value}" for setting, (name, value) in mine.items()
                 if value is not None and setting not in taken]  # fmt: skip
        lines += [] if {"requeue", "no-requeue"} & set(options) else ["--requeue"]
        return lines + [f"--{name}" if value is None else f"--{name}={value}" for name, value in options.items()]


class SlurmExecutor:
    def __init__(self, settings: SlurmSettings, workers: int | None = None) -> None:
        self.requests = Requests.of(settings)  # bad options fail before anything is submitted
        self.workers = workers or 256  # jobs in the queue at once

    def run(
        self, steps: list[Step], logs: Path, done: Callable[[Outcome], None], journal: StudyJournal
    ) -> list[Outcome]:
        folder = private_folder(logs.parent / "slurm")
        tag = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]  # this study's jobs, by name
        watcher = JobWatcher(folder)
        _cancel_outdated(journal, {(s.id, s.command, self._request(s)) for s in steps})

        def start(step: Step) -> concurrent.futures.Future[int]:
            name, request, status = f"{step.id}.{tag}", self._request(step), folder / f"{step.id}.status"
            with _signals_held():  # a job submitted is a job journaled and followed
                job_id = journal.last_job(step.id, step.command, ENGINE, request)
                if job_id is not None and watcher.reattach(job_id, name, status):
                    logger.info("%s: following job %s, which an earlier driver submitted", step.label, job_id)
                else:
                    job_id = self._submit(step, name, folder, status, log_path(logs, step))
                    journal.submitted(step.id, step.command, ENGINE, job_id, request)
                    logger.info("%s: submitted as job %s", step.label, job_id)
                return watcher.follow(job_id, step, status, request)

        try:
            return run_when_ready(steps, start, logs, done, self.workers)
        except KeyboardInterrupt:
            with _signals_held():
                cancel(watcher.live_jobs())
            raise TrainingInterrupted(
                "the study was interrupted and its jobs cancelled (trainings save a checkpoint); rerun the same "
                "command to continue"
            ) from None
        finally:
            watcher.stop()

    def _request(self, step: Step) -> str:
        return " ".join(self.requests.lines(step))

    def _submit(self, step: Step, name: str, folder: Path, status: Path, log: Path) -> str:
        """Submit the step's job; after an sbatch that failed unclearly (a timeout), the job it may have queued."""
        options = [f"--job-name={name}", f"--output={folder / step.id}.%j.out", "--open-mode=append", "--export=ALL",
                   *self.requests.lines(step)]  # fmt: skip
        script = self._script(step, folder, status, log, options)
        try:
            return submit(options, script)
        except (RuntimeError, NoAnswer):
            try:
                queued = SlurmQueue.named(name)
            except NoAnswer:
                queued = None
            if queued is None:
                raise
            return queued

    @staticmethod
    def _script(step: Step, folder: Path, status: Path, log: Path, options: list[str]) -> Path:
        command = [sys.executable, "-m", "peftbench.executors.job", str(status), str(log), "--", *step.argv]
        lines = ["#!/bin/bash", f"# {step.label}: submitted by peftbench as", f"#   sbatch {' '.join(options)}",
                 f"exec {shlex.join(command)}"]  # fmt: skip
        script = folder / f"{step.id}.sbatch"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        script.chmod(PRIVATE_FILE)
        return script


def _cancel_outdated(journal: StudyJournal, current: set[tuple[str, str, str]]) -> None:
    """An earlier driver's jobs still alive that run a step's old command or request would write into the same
    run folders as the new ones: cancelled, and said."""
    outdated = {job: key for key, job in journal.unended_jobs(ENGINE).items() if key not in current}
    if not outdated:
        return
    try:
        alive = SlurmQueue.queued(list(outdated))
    except NoAnswer:
        return
    for job_id in alive:
        logger.warning("cancelling job %s: an earlier driver submitted it for %s with another command or request",
                       job_id, outdated[job_id][0])  # fmt: skip
    cancel(list(alive))


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block ends (they are delivered then). Python runs handlers in
    the main thread whichever thread the kernel chose: the watcher thread blocks them for good."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class FollowedJob:
    step: Step
    future: concurrent.futures.Future[int]
    status_file: Path
    request: str
    seen: JobState | None = None
    never_since: float | None = None


class JobWatcher:
    """One thread that polls Slurm for every followed job and settles each job's future when it ends: its exit
    status, or StepLost with how it ended (cancelled, timed out, out of memory, never able to start). A controller
    that does not answer is asked again (and said every 10 minutes): a job is never taken as ended for that."""

    def __init__(self, folder: Path, poll_s: float = POLL_S) -> None:
        self.queue, self.folder, self.poll_s = SlurmQueue(), folder, poll_s
        self.jobs: dict[str, FollowedJob] = {}
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._watch, name="slurm-watcher", daemon=True)
        with _signals_held():  # the thread keeps them blocked: a signal goes to the main thread, which holds it
            self.thread.start()  # while a submission is being journaled

    def reattach(self, job_id: str, name: str, status_file: Path) -> bool:
        """Whether an earlier driver's job is this step's and worth following: queued or running, or finished
        well. Asks until Slurm answers (a wrong "no" would submit the step twice)."""
        while True:
            try:
                live = self.queue.queued([job_id])
                if job_id in live:
                    return live[job_id].name == name
                return self.queue.states([job_id], {job_id: status_file})[job_id].state == "COMPLETED"
            except NoAnswer as exc:
                logger.warning("Slurm does not answer (%s); asking again in %.0f s", exc, self.poll_s)
                time.sleep(self.poll_s)

    def follow(self, job_id: str, step: Step, status_file: Path, request: str) -> concurrent.futures.Future[int]:
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self.lock:
            self.jobs[job_id] = FollowedJob(step, future, status_file, request)
        return future

    def live_jobs(self) -> list[str]:
        with self.lock:
            return list(self.jobs)

    def stop(self) -> None:
        self.stopped.set()

    def _watch(self) -> None:
        try:
            self._poll_until_stopped()
        finally:  # whatever ended the loop, no step is left waiting for ever
            with self.lock:
                pending, self.jobs = self.jobs, {}
            for job_id, job in pending.items():
                if not job.future.done():
                    job.future.set_exception(StepLost(f"the driver stopped following Slurm job {job_id}"))

    def _poll_until_stopped(self) -> None:
        silent_since: float | None = None
        said_at = 0.0
        while not self.stopped.wait(self.poll_s):
            with self.lock:
                followed = dict(self.jobs)
            if not followed:
                continue
            try:
                states = self.queue.states(list(followed), {j: f.status_file for j, f in followed.items()})
            except Exception as exc:  # noqa: BLE001 -- no answer, or an answer we cannot read: ask again
                now = time.monotonic()
                silent_since = silent_since or now
                if now - said_at >= NO_ANSWER_REMINDER_S:
                    logger.warning("Slurm does not answer (%s) for %.0f s; asking again every %.0f s", exc,
                                   now - silent_since, self.poll_s)  # fmt: skip
                    said_at = now
                continue
            silent_since, said_at = None, 0.0
            for job_id, job in followed.items():
                self._update(job_id, job, states[job_id])

    def _update(self, job_id: str, job: FollowedJob, state: JobState) -> None:
        if (state.state, state.reason) != ((job.seen.state, job.seen.reason) if job.seen else None):
            reason = f" ({state.reason})" if state.reason else ""
            logger.info("job %s (%s): %s%s", job_id, job.step.label, state.state, reason)
        job.seen = state
        if state.live:
            job.never_since = (job.never_since or time.monotonic()) if state.never_starts else None
            if job.never_since is None or time.monotonic() - job.never_since < NEVER_STARTS_GRACE_S:
                return
            cancel([job_id])
            self._settle(job_id, StepLost(f"Slurm will never start job {job_id}: it is pending ({state.reason}); "
                                          f"it asked for {job.request}"))  # fmt: skip
        elif state.state == "COMPLETED":
            self._settle(job_id, 0)
        elif state.state == "FAILED" and state.exit_status:  # the command failed: its log says why
            self._settle(job_id, state.exit_status)
        else:
            how = f"{state.state}" + (f" ({state.reason})" if state.reason else "")
            slurm_output = self.folder / f"{job.step.id}.{job_id}.out"
            said = f"\nSlurm's output ({slurm_output}):\n{log_tail(slurm_output)}" if slurm_output.exists() else ""
            self._settle(job_id, StepLost(f"Slurm job {job_id} ended {how}; it asked for {job.request}{said}"))

    def _settle(self, job_id: str, result: int | StepLost) -> None:
        with self.lock:
            job = self.jobs.pop(job_id)
        if isinstance(result, StepLost):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
