"""Studies on a real single-node Slurm (slurmctld and slurmd on this machine): the local executor's accuracies,
a requeued training, a driver killed with -9, a cancelled job, a job that can never start, accounting on and
off, and no credential in the study folder.

Marked ``slurm``. ``make test-slurm`` brings Slurm up with ``.ci/slurm`` (root: CI) and names it in
PEFTBENCH_SLURM_CONTROL so the tests can switch accounting; without it the tests use the Slurm they find.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ray_processes import CANARIES
from safetensors.torch import load_file
from tiny_study import accuracies, long_training_study, reproduce, reproduce_command, study_environment

pytestmark = pytest.mark.slurm

CONTROL = os.environ.get("PEFTBENCH_SLURM_CONTROL")
ON_TWO_CPUS = ["--executor", "slurm", "--slurm_cpus_per_job", "1", "--slurm_mem_gb_per_job", "1"]
SMALL = ["--methods", "lora,ia3", "--max_train_samples", "16", "--max_eval_samples", "4", "--datasets", "boolq",
         "--eval_modes", "loglik"]  # fmt: skip


def _slurm(accounting: bool) -> None:
    if CONTROL:
        subprocess.run(["bash", CONTROL, "up", *(["--accounting"] if accounting else [])], check=True, timeout=600)
    elif shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.skip("no Slurm here: make test-slurm brings one up (as root)")
    elif (subprocess.run(["sacct", "-n"], capture_output=True).returncode == 0) != accounting:
        pytest.skip(f"this Slurm has accounting {'off' if accounting else 'on'}; PEFTBENCH_SLURM_CONTROL switches it")


@pytest.fixture(scope="module")
def slurm_without_accounting() -> None:
    _slurm(accounting=False)


def _journal(out: Path) -> list[dict]:
    path = out / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _job_of(out: Path, step_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [e["job"] for e in _journal(out) if e["event"] == "submitted" and e["step"] == step_id]
        if jobs:
            return jobs[-1]
        time.sleep(0.2)
    raise AssertionError(f"{step_id} was not submitted in {timeout} s")


def _wait_for(condition, timeout: float = 300, what: str = "") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.2)


def _squeue(job: str) -> str:
    lines = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.split()
    return lines[0] if lines else ""


def test_a_study_on_slurm_reaches_the_local_executors_accuracies_with_no_credential_on_disk(
    slurm_without_accounting, tiny_llama, data_dir, tmp_path
) -> None:
    local = reproduce(["cpu-small", "--model_name", str(tiny_llama), *SMALL], tmp_path / "local", data_dir)
    assert local.returncode == 0, local.stderr[-4000:]
    out = tmp_path / "slurm"
    result = reproduce(["cpu-small", "--model_name", str(tiny_llama), *SMALL, *ON_TWO_CPUS], out, data_dir,
                       **CANARIES)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "study: 6 finished, 0 finished before, 0 failed, 0 not run" in result.stderr
    assert accuracies(out) == accuracies(tmp_path / "local")
    scripts = sorted((out / "slurm").glob("*.sbatch"))
    assert len(scripts) == 6
    assert "--export=ALL --time=1440 --cpus-per-task=1 --mem=1G --requeue" in scripts[0].read_text()
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert not any(canary.encode() in text for canary in CANARIES.values()), path
    for folder in (out / "slurm", out / "logs"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    statuses = sorted((out / "slurm").glob("*.status"))
    assert len(statuses) == 6
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in [*scripts, *statuses, out / "journal.jsonl"])


def test_a_requeued_training_a_killed_driver_and_a_cancelled_job_end_in_one_complete_study(
    slurm_without_accounting, tiny_llama, data_dir, tmp_path
) -> None:
    study = tmp_path / "preempted.yaml"
    study.write_text(long_training_study(tiny_llama, "one training long enough to be requeued while it runs"))
    out = tmp_path / "study"
    command, environment = reproduce_command([str(study), *ON_TWO_CPUS], out, data_dir), study_environment(out)
    runs = out / "seed-36" / "results_lora"
    first = subprocess.Popen(command, env=environment, stderr=(tmp_path / "first_driver.log").open("w"))
    training = _job_of(out, "seed-36.lora.train")
    _wait_for(lambda: list(runs.glob("*/checkpoint-*/trainer_state.json")), what="the first checkpoint")
    subprocess.run(["scontrol", "requeue", training], check=True)  # what a preempting partition does
    _wait_for(lambda: _squeue(training) == "PENDING", 60, "the requeued job to be pending")
    # Slurm holds a requeued job back a while (BeginTime); a preempting partition would start it when a node frees.
    subprocess.run(["scontrol", "update", f"JobId={training}", "StartTime=now"], check=True)
    (run,) = runs.iterdir()
    resumed = lambda: any(json.loads(line).get("event") == "resume" for line in (run / "output.jsonl").open())  # noqa: E731
    _wait_for(resumed, what="the requeued training to resume")
    first.kill()  # the driver dies; its job runs on
    first.wait()
    assert _squeue(training) == "RUNNING"

    second = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    evaluation = _job_of(out, "seed-36.lora.eval-loglik")
    subprocess.run(["scancel", evaluation], check=True)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 2, stderr[-4000:]
    assert f"following job {training}, which an earlier driver submitted" in stderr
    assert "FAILED seed 36: lora evaluation (loglik) (its job ended)" in stderr
    assert f"Slurm job {evaluation} ended CANCELLED" in stderr

    third = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-4000:]
    assert "study: 2 finished, 1 finished before, 0 failed, 0 not run" in third.stderr
    assert [p.name for p in runs.iterdir()] == [run.name]  # one run folder: nothing trained twice
    submitted = [e["step"] for e in _journal(out) if e["event"] == "submitted"]
    assert submitted.count("seed-36.lora.train") == 1
    events = [json.loads(line).get("event") for line in (run / "output.jsonl").open()]
    assert events[:3] == [None, "interrupted", "resume"] and events[-1] == "train_end"

    train_argv = next(e["command"] for e in _journal(out) if e["step"] == "seed-36.lora.train").split()[1:]
    reference = tmp_path / "reference"
    argv = [reference if a == str(runs) else a for a in train_argv]
    subprocess.run([sys.executable, "-m", "peftbench.cli", *map(str, argv)], check=True, capture_output=True)
    ours = load_file(run / "checkpoint-300" / "adapter_model.safetensors")
    theirs = load_file(next(reference.iterdir()) / "checkpoint-300" / "adapter_model.safetensors")
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def test_a_job_that_can_never_start_is_reported_within_a_minute_with_slurms_reason(
    slurm_without_accounting, tiny_llama, data_dir, tmp_path
) -> None:
    began = time.monotonic()
    result = reproduce(["cpu-small", "--model_name", str(tiny_llama), *SMALL, "--executor", "slurm",
                        "--slurm_cpus_per_job", "64"], tmp_path / "study", data_dir)  # fmt: skip
    assert result.returncode == 2
    assert time.monotonic() - began < 90
    assert "study: 0 finished, 0 finished before, 3 failed, 3 not run" in result.stderr
    assert "--cpus-per-task=64" in result.stderr
    assert not subprocess.run(["squeue", "-h", "--me"], capture_output=True, text=True).stdout.strip()


def test_with_accounting_a_cancelled_job_is_reported_and_the_rest_finish(tiny_llama, data_dir, tmp_path) -> None:
    _slurm(accounting=True)
    try:
        out = tmp_path / "study"
        process = subprocess.Popen(reproduce_command(["cpu-small", "--model_name", str(tiny_llama), *SMALL,
                                                      *ON_TWO_CPUS], out, data_dir),
                                   env=study_environment(out), stderr=subprocess.PIPE, text=True)  # fmt: skip
        subprocess.run(["scancel", _job_of(out, "seed-36.ia3.train")], check=True)
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 2, stderr[-4000:]
        assert "study: 3 finished, 0 finished before, 1 failed, 2 not run" in stderr
        assert "Slurm accounting is not available" not in stderr
        assert "ended CANCELLED" in stderr
    finally:
        if CONTROL:
            subprocess.run(["bash", CONTROL, "up"], check=True, timeout=600)


def test_sigterm_to_the_driver_cancels_its_jobs(slurm_without_accounting, tiny_llama, data_dir, tmp_path) -> None:
    out = tmp_path / "study"
    process = subprocess.Popen(reproduce_command(["cpu-small", "--model_name", str(tiny_llama), *SMALL,
                                                  *ON_TWO_CPUS], out, data_dir),
                               env=study_environment(out), stderr=subprocess.PIPE, text=True)  # fmt: skip
    job = _job_of(out, "seed-36.lora.train")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "the study was interrupted and its jobs cancelled" in stderr
    _wait_for(lambda: _squeue(job) in ("", "CANCELLED", "COMPLETED"), 60, "the job to be cancelled")
