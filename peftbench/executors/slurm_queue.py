"""What Slurm says about jobs, through its commands: ``sbatch`` to submit, ``squeue`` for jobs queued or running,
``scontrol`` for jobs that ended a short while ago (``MinJobAge``, 5 minutes by default), ``sacct`` where the cluster
keeps accounting (many small clusters run without it), and the exit status the job wrote itself when Slurm has
forgotten the job altogether. ``squeue`` is one command for all jobs, so a driver of 200 jobs polls as cheaply
as a driver of one. Only the controller (``squeue``, ``scontrol``) can say a job is still alive.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import UserError

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 60
SUBMIT_TIMEOUT_S = 300  # sbatch may have queued the job when it times out: give a busy controller time
# Pending reasons that no amount of waiting changes: the request exceeds what the partition or a per-job limit
# allows, or names something that does not exist. (Resources, Priority, BeginTime, ReqNodeNotAvail: they pass.)
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
                "InvalidQOS", "PerJob", "DependencyNeverSatisfied")  # fmt: skip
LIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
        "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT")  # fmt: skip
# Settings of the environment that would make sbatch wait, submit to another cluster or test only: not ours.
FOREIGN_SETTINGS = ("SBATCH_WAIT", "SBATCH_CLUSTERS", "SLURM_CLUSTERS", "SBATCH_HOLD", "SBATCH_TEST_ONLY")


class NoAnswer(Exception):
    """Slurm's controller did not answer (busy, restarting): nothing is known; ask again."""


@dataclass(frozen=True)
class JobState:
    state: str  # Slurm's: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL...
    reason: str = ""  # why it is pending, or how it ended
    exit_status: int | None = None  # the batch script's, once it ended
    name: str = ""  # the job's name, where the controller said it

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def never_starts(self) -> bool:
        return self.state == "PENDING" and any(reason in self.reason for reason in NEVER_STARTS)


def run_slurm(argv: list[str], timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    """A Slurm command's result; NoAnswer when it could not be run or did not answer in time."""
    environment = {k: v for k, v in os.environ.items() if k not in FOREIGN_SETTINGS}
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout_s,
                              env=environment)  # fmt: skip
    except FileNotFoundError:
        raise UserError(f"--executor slurm: {argv[0]} is not on PATH (run the study on a Slurm login node)") from None
    except subprocess.TimeoutExpired:
        raise NoAnswer(f"{argv[0]} did not answer in {timeout_s:.0f} s") from None
    except OSError as exc:  # a login node's process limit
        raise NoAnswer(f"{argv[0]} could not start: {exc}") from None


def submit(options: list[str], script: Path) -> str:
    """The job id of the submitted script, or a RuntimeError with sbatch's own words (a request no partition can
    hold, an unknown account). Options on the command line: they beat SBATCH_* variables of the environment."""
    result = run_slurm(["sbatch", "--parsable", *options, str(script)], SUBMIT_TIMEOUT_S)
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode != 0 or not job_id.isdigit():
        raise RuntimeError(f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip() or 'no job id'}")
    return job_id


def cancel(job_ids: list[str]) -> None:
    if not job_ids:
        return
    try:
        result = run_slurm(["scancel", *job_ids])
    except NoAnswer as exc:
        result = subprocess.CompletedProcess([], 1, "", str(exc))
    if result.returncode != 0:
        logger.warning("scancel %s failed (%s): cancel them by hand", " ".join(job_ids), result.stderr.strip())


class SlurmQueue:
    """The state of the jobs a driver follows, polled together."""

    def __init__(self) -> None:
        self.accounting: bool | None = None  # unknown until sacct is first needed

    def states(self, job_ids: list[str], status_files: dict[str, Path]) -> dict[str, JobState]:
        """Every job's state; a job Slurm no longer knows is read from the status file it wrote, or is LOST.
        NoAnswer when the controller does not answer."""
        states = self.queued(job_ids)
        for job_id in [j for j in job_ids if j not in states]:
            states[job_id] = (self._controller(job_id) or self._accounted(job_id)
                              or _written_status(job_id, status_files.get(job_id)))  # fmt: skip
        return states

    @staticmethod
    def queued(job_ids: list[str]) -> dict[str, JobState]:
        """The live ones among ``job_ids``, with their names."""
        if not job_ids:
            return {}
        # All of this user's jobs, not --jobs=...: squeue refuses the whole list when one id is unknown to it.
        result = run_slurm(["squeue", "--noheader", "--me", "--states=all", "--format=%i|%T|%j|%r"])
        if result.returncode != 0:
            raise NoAnswer(f"squeue: {result.stderr.strip()}")
        states = {}
        for line in result.stdout.splitlines():
            job_id, state, name, reason = (line.split("|", 3) + ["", "", ""])[:4]
            if job_id.strip() in job_ids and state in LIVE:
                states[job_id.strip()] = JobState(state, reason, name=name)
        return states

    @staticmethod
    def named(name: str) -> str | None:
        """The id of this user's live job of this name, if any."""
        result = run_slurm(["squeue", "--noheader", "--me", f"--name={name}", "--format=%i"])
        found = result.stdout.split() if result.returncode == 0 else []
        return found[0] if found else None

    @staticmethod
    def _controller(job_id: str) -> JobState | None:
        result = run_slurm(["scontrol", "show", "job", "--oneliner", job_id])
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:  # the controller has forgotten it
                return None
            raise NoAnswer(f"scontrol: {result.stderr.strip()}")
        fields: dict[str, str] = {}
        for item in result.stdout.split():  # the first of each name: a comment or a path may hold "JobState=..."
            name, equals, value = item.partition("=")
            if equals:
                fields.setdefault(name, value)
        return _ended(fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""), fields.get("ExitCode", ""),
                      fields.get("JobName", ""))  # fmt: skip

    def _accounted(self, job_id: str) -> JobState | None:
        if self.accounting is False:
            return None
        result = run_slurm(["sacct", "--noheader", "--parsable2", "--allocations", "--format=State,Reason,ExitCode",
                            f"--jobs={job_id}"])  # fmt: skip
        if result.returncode != 0:
            if self.accounting is None:  # said once per driver, not once per poll
                why = (result.stderr.strip().splitlines() or ["sacct failed"])[-1]
                logger.info("Slurm accounting is not available (%s): job ends are read from scontrol and from the "
                            "exit status each job writes", why)  # fmt: skip
            self.accounting = False
            return None
        self.accounting = True
        lines = [line for line in result.stdout.strip().splitlines() if line.split("|")[0].strip()]
        if not lines:
            return None
        state, reason, exit_code = (lines[-1].split("|") + ["", ""])[:3]
        ended = _ended(state.split()[0], reason, exit_code)  # "CANCELLED by 0" -> CANCELLED
        if ended.live:  # the controller has forgotten a job accounting still calls alive: it is not coming back
            return JobState("LOST", f"accounting says {ended.state}, but Slurm's controller no longer knows it")
        return ended


def _ended(state: str, reason: str, exit_code: str, name: str = "") -> JobState:
    """Slurm's ExitCode is STATUS:SIGNAL; a script killed by a signal gets the shell's 128 + signal."""
    status, _, killed_by = exit_code.partition(":")
    exit_status = int(status) if status.isdigit() else None
    if killed_by.isdigit() and int(killed_by):
        exit_status = 128 + int(killed_by)
    return JobState(state, "" if reason == "None" else reason, exit_status, name)


def _written_status(job_id: str, path: Path | None) -> JobState:
    """The exit status the job's last run wrote (peftbench.executors.job), for jobs Slurm has forgotten."""
    try:
        written = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
        status = int(written["exit_status"]) if written.get("job") == job_id else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        status = None
    if status is None:
        return JobState("LOST", f"Slurm no longer knows job {job_id}, and it wrote no exit status")
    return JobState("COMPLETED" if status == 0 else "FAILED", "", status)
