"""The Slurm executor's requests and its reading of Slurm's answers (Slurm's commands replaced by recorded answers;
tests/end_to_end/test_slurm_cluster.py runs a real Slurm)."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import subprocess

import pytest

import peftbench.executors.slurm as slurm
import peftbench.executors.slurm_queue as slurm_queue
from peftbench.errors import UserError
from peftbench.executors.base import StepLost
from peftbench.executors.slurm import JobWatcher, Requests
from peftbench.studies.design import SlurmSettings
from peftbench.studies.plan import Step

TRAIN, ANALYSIS = Step("s.train", "s training", ("train",), gpu=True), Step("s.analysis", "analysis", ("analyze",))


def test_requests_default_to_a_day_eight_cpus_and_one_gpu_for_gpu_steps_only() -> None:
    requests = Requests.of(SlurmSettings(partition="gpu"))
    assert requests.lines(TRAIN) == ["--partition=gpu", "--time=1440", "--cpus-per-task=8", "--gpus-per-node=1",
                                     "--requeue"]  # fmt: skip
    assert requests.lines(ANALYSIS) == ["--partition=gpu", "--time=1440", "--cpus-per-task=8", "--requeue"]


def test_a_users_sbatch_option_is_the_request_when_no_setting_gives_it() -> None:
    requests = Requests.of(
        SlurmSettings(mem_gb_per_job=16, sbatch=("--cpus-per-task=2", "--exclusive", "--no-requeue"))
    )
    assert requests.lines(ANALYSIS) == ["--time=1440", "--mem=16G", "--cpus-per-task=2", "--exclusive", "--no-requeue"]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (SlurmSettings(cpus_per_job=1, sbatch=("--cpus-per-task=2",)), "slurm cpus_per_job 1 and the sbatch option "
         "--cpus-per-task ask for the same thing"),
        (SlurmSettings(gpus_per_job=2, sbatch=("--gres=gpu:4",)), "--gres ask for the same thing"),
        (SlurmSettings(sbatch=("--output=x.log",)), "--output: peftbench sets it, or needs it unset, for each job"),
        (SlurmSettings(sbatch=("account=abc",)), "write it as --name=value"),
        (SlurmSettings(time_min=60, sbatch=("--time 5",)), "write it as --name=value"),
        (SlurmSettings(sbatch=("--clusters=other",)), "--clusters: peftbench sets it, or needs it unset"),
    ],
)  # fmt: skip
def test_a_request_given_twice_or_an_option_peftbench_owns_is_one_error(settings, words) -> None:
    with pytest.raises(UserError, match=words):
        Requests.of(settings)


class FakeSlurm:
    """Slurm's commands, answered from a table: squeue's lines, scontrol's and sacct's per job."""

    def __init__(self, squeue: str = "", scontrol: dict[str, str] | None = None, sacct: str | None = None) -> None:
        self.squeue, self.scontrol, self.sacct, self.calls = squeue, scontrol or {}, sacct, []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        if argv[0] == "squeue":
            return subprocess.CompletedProcess(argv, 0, self.squeue, "")
        if argv[0] == "scontrol":
            known = self.scontrol.get(argv[-1])
            return subprocess.CompletedProcess(argv, 1 if known is None else 0, known or "",
                                               "slurm_load_jobs error: Invalid job id specified")  # fmt: skip
        if argv[0] == "sacct":
            if self.sacct is None:
                return subprocess.CompletedProcess(argv, 1, "", "sacct: error: Slurm accounting storage is disabled")
            return subprocess.CompletedProcess(argv, 0, self.sacct, "")
        return subprocess.CompletedProcess(argv, 0, "", "")  # scancel


def _watch(monkeypatch, fake: FakeSlurm, tmp_path, grace_s: float = 0.0) -> concurrent.futures.Future[int]:
    monkeypatch.setattr(slurm_queue, "run_slurm", fake)
    monkeypatch.setattr(slurm, "NEVER_STARTS_GRACE_S", grace_s)
    watcher = JobWatcher(tmp_path, poll_s=0.01)
    future = watcher.follow("7", TRAIN, tmp_path / "s.train.status", "--cpus-per-task=8")
    try:
        concurrent.futures.wait([future], timeout=10)
    finally:
        watcher.stop()
    return future


def test_a_job_that_can_never_start_is_cancelled_and_reported_with_slurms_reason_and_the_request(
    monkeypatch, tmp_path
) -> None:
    fake = FakeSlurm(squeue="7|PENDING|s.train.ab12|PartitionConfig\n8|RUNNING|other|None\n")
    future = _watch(monkeypatch, fake, tmp_path)
    with pytest.raises(StepLost, match=r"Slurm will never start job 7: it is pending \(PartitionConfig\); it asked "
                                       r"for --cpus-per-task=8"):  # fmt: skip
        future.result()
    assert ["scancel", "7"] in fake.calls


def test_a_job_that_waits_for_a_node_is_left_waiting(monkeypatch, tmp_path) -> None:
    future = _watch(
        monkeypatch, FakeSlurm(squeue="7|PENDING|s.train.ab12|ReqNodeNotAvail, Reserved for maintenance\n"), tmp_path
    )
    assert not future.done()


@pytest.mark.parametrize(
    ("scontrol", "expected"),
    [
        ("JobId=7 JobState=COMPLETED Reason=None ExitCode=0:0", 0),
        ("JobId=7 JobState=FAILED Reason=NonZeroExitCode ExitCode=2:0", 2),
        ("JobId=7 JobState=CANCELLED Reason=None ExitCode=0:15", "ended CANCELLED; it asked for --cpus-per-task=8"),
        ("JobId=7 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:0", r"ended TIMEOUT \(TimeLimit\)"),
        ("JobId=7 JobState=FAILED Reason=NonZeroExitCode ExitCode=0:9", 137),  # killed: the shell's 128 + 9
        ("JobId=7 JobState=PREEMPTED Reason=None ExitCode=0:15 Comment=JobState=COMPLETED", "ended PREEMPTED"),
    ],
)
def test_every_end_is_read_from_scontrol_without_accounting(monkeypatch, tmp_path, scontrol, expected) -> None:
    future = _watch(monkeypatch, FakeSlurm(scontrol={"7": scontrol}), tmp_path)
    if isinstance(expected, int):
        assert future.result() == expected
    else:
        with pytest.raises(StepLost, match=expected):
            future.result()


def test_a_job_slurm_forgot_is_read_from_its_status_file_and_sacct_is_asked_once(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setattr(slurm_queue, "run_slurm", fake := FakeSlurm())
    (tmp_path / "a.status").write_text(json.dumps({"job": "7", "restart": 1, "exit_status": 0}))
    (tmp_path / "b.status").write_text(json.dumps({"job": "5", "restart": 0, "exit_status": 0}))  # an older job's
    queue = slurm_queue.SlurmQueue()
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            states = queue.states(["7", "9"], {"7": tmp_path / "a.status", "9": tmp_path / "b.status"})
    assert states["7"].state == "COMPLETED" and states["9"].state == "LOST"
    assert sum(argv[0] == "sacct" for argv in fake.calls) == 1
    assert caplog.text.count("Slurm accounting is not available (sacct: error: Slurm accounting storage is "
                             "disabled)") == 1  # fmt: skip


def test_with_accounting_sacct_tells_how_a_job_ended(monkeypatch, tmp_path) -> None:
    future = _watch(monkeypatch, FakeSlurm(sacct="CANCELLED by 0|None|0:0\n"), tmp_path)
    with pytest.raises(StepLost, match="ended CANCELLED;"):
        future.result()


def test_a_controller_that_does_not_answer_is_asked_again_and_a_job_is_never_taken_for_ended(
    monkeypatch, tmp_path
) -> None:
    answers = iter([subprocess.CompletedProcess([], 1, "", "slurm_load_jobs error: Socket timed out")] * 3)

    def flaky(argv: list[str]) -> subprocess.CompletedProcess:
        if argv[0] == "squeue":
            return next(answers, subprocess.CompletedProcess(argv, 0, "7|RUNNING|s.train.ab12|None\n", ""))
        return FakeSlurm(scontrol={"7": "JobId=7 JobState=COMPLETED ExitCode=0:0"})(argv)

    future = _watch(monkeypatch, flaky, tmp_path)
    assert not future.done()  # three polls without an answer, then RUNNING: still followed


def test_a_watcher_that_stops_leaves_no_step_waiting(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(slurm_queue, "run_slurm", FakeSlurm(squeue="7|RUNNING|s.train.ab12|None\n"))
    watcher = JobWatcher(tmp_path, poll_s=0.01)
    future = watcher.follow("7", TRAIN, tmp_path / "s.status", "")
    watcher.stop()
    with pytest.raises(StepLost, match="the driver stopped following Slurm job 7"):
        future.result(timeout=10)
