"""A study on a Ray cluster of separate ``ray start`` processes whose driver is killed with -9: Ray stops its
training with it (no orphan runs on) and the rerun resumes from its newest checkpoint. (The same cluster's
accuracies and credentials: test_study_executors.py.)

Marked ``distributed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from tiny_study import long_training_study, reproduce_command, study_environment

pytestmark = pytest.mark.distributed


def test_a_killed_driver_stops_its_training_with_a_checkpoint_and_the_rerun_resumes_it(
    ray_address, tiny_llama, data_dir, tmp_path
) -> None:
    study = tmp_path / "long.yaml"
    study.write_text(long_training_study(tiny_llama, "one training long enough to kill its driver while it runs"))
    out, runs = tmp_path / "study", tmp_path / "study" / "seed-36" / "results_lora"
    command = reproduce_command([str(study), "--executor", "ray", "--ray_address", ray_address], out, data_dir)
    driver = subprocess.Popen(command, env=study_environment(out), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/checkpoint-*/trainer_state.json")):
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.1)
    driver.kill()
    driver.wait()
    (run,) = runs.iterdir()
    deadline = time.monotonic() + 60
    while _processes_writing(runs):  # Ray ends the tasks of a dead driver, and their processes with them
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rerun = subprocess.run(command, env=study_environment(out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "study: 3 finished, 0 finished before, 0 failed, 0 not run" in rerun.stderr
    assert [p.name for p in runs.iterdir()] == [run.name]  # resumed, not started again
    records = [json.loads(line) for line in (run / "output.jsonl").open()]
    assert [r.get("event") for r in records] == [None, "resume", "train_end"]


def _processes_writing(folder: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()
    return [pid for pid in found if int(pid) != os.getpid()]
