"""A tiny study on each executor, as a user runs it (subprocesses): the same accuracies everywhere; a failed step
reported while the rest finish; a rerun that runs only what is missing; one step per GPU.

Marked ``distributed`` (several processes at once; a Ray cluster inside the driver, and one of separate ``ray
start`` processes). A real Slurm: test_slurm_cluster.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ray_processes import CANARIES
from tiny_study import accuracies, long_training_study, reproduce, reproduce_command, study_environment

pytestmark = pytest.mark.distributed

TINY = ["--methods", "lora,ia3", "--seeds", "2", "--max_train_samples", "16", "--max_eval_samples", "4",
        "--datasets", "boolq,piqa", "--eval_modes", "loglik"]  # fmt: skip


@pytest.fixture(scope="module")
def studies(tiny_llama, data_dir, tmp_path_factory, ray_address) -> dict[str, Path]:
    """The tiny study on the local executor, on a Ray cluster the driver starts, and on a cluster of ``ray start``
    processes, the latter with credentials in its environment."""
    executors = {"local": [], "ray": ["--executor", "ray", "--workers", "2"],
                 "ray-processes": ["--executor", "ray", "--ray_address", ray_address]}  # fmt: skip
    folders = {}
    for name, flags in executors.items():
        out = tmp_path_factory.mktemp(name)
        secrets = CANARIES if name == "ray-processes" else {}
        result = reproduce(["cpu-small", "--model_name", str(tiny_llama), *TINY, *flags], out, data_dir, **secrets)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "study: 11 finished, 0 finished before, 0 failed, 0 not run" in result.stderr
        folders[name] = out
    return folders


@pytest.mark.parametrize("executor", ["ray", "ray-processes"])
def test_a_study_on_ray_reaches_the_sequential_executors_accuracies(executor, studies) -> None:
    sequential = accuracies(studies["local"])
    assert len(sequential) == 3 * 3  # zero-shot, lora, ia3 × boolq, piqa, average
    assert accuracies(studies[executor]) == sequential
    logs = sorted(p.name for p in (studies[executor] / "logs").glob("*.log"))
    assert len(logs) == 11 and "seed-37.ia3.train.log" in logs


def test_no_credential_reaches_the_study_folder(studies) -> None:
    for path in studies["ray-processes"].rglob("*"):
        if path.is_file():
            assert not any(canary.encode() in path.read_bytes() for canary in CANARIES.values()), path


def test_a_failed_step_is_reported_the_rest_finish_and_a_rerun_runs_only_what_is_missing(
    tiny_llama, data_dir, tmp_path
) -> None:
    study = tmp_path / "mine.yaml"
    good = f"""\
summary: one good method, one whose targets the model lacks
model: {tiny_llama}
budget: {{max_train_samples: 16, batch: 8, val_set_size: 8}}
methods:
- {{method: lora, lr: 1e-3, lr_source: test, settings: {{r_ab: 4, target_modules: q_proj}}}}
- {{method: ia3, lr: 1e-3, lr_source: test, settings: {{target_modules: nope}}}}
benchmarks: boolq
evaluations:
- {{mode: loglik, samples: 4}}
"""
    study.write_text(good)
    out = tmp_path / "study"
    first = reproduce([str(study), "--workers", "2"], out, data_dir)
    assert first.returncode == 2
    assert "study: 3 finished, 0 finished before, 1 failed, 2 not run" in first.stderr
    assert "FAILED seed 36: ia3 training (exit status 2): peftbench train --peft_type ia3" in first.stderr
    assert "error: --target_modules nope not found in the model" in first.stderr  # the log's last lines
    assert "NOT RUN seed 36: analysis (loglik): needs seed-36.ia3.eval-loglik" in first.stderr
    assert f"to run what is missing (finished steps are skipped): peftbench reproduce {study}" in first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith("error: 3 of 6 steps did not finish")
    lora_runs = list((out / "seed-36" / "results_lora").iterdir())
    results = {p: p.stat().st_mtime_ns for p in out.rglob("output_*_eval.jsonl")}
    assert len(lora_runs) == 1 and len(results) == 2  # zero-shot and lora evaluated

    study.write_text(good.replace("target_modules: nope", "target_modules: down_proj"))
    second = reproduce([str(study), "--workers", "2"], out, data_dir)
    assert second.returncode == 0, second.stderr[-4000:]
    # zero-shot's and lora's evaluations finished before with the same commands, on the same training: not rerun
    assert "study: 3 finished, 3 finished before, 0 failed, 0 not run" in second.stderr
    assert list((out / "seed-36" / "results_lora").iterdir()) == lora_runs  # not trained again
    assert {p: p.stat().st_mtime_ns for p in results} == results  # nor evaluated again
    assert (out / "page.md").is_file()


def test_local_gpus_give_each_step_its_gpu(tiny_llama, data_dir, tmp_path) -> None:
    study = tmp_path / "gpu.yaml"
    study.write_text(f"""\
summary: a GPU study, run here on CPUs that are told which GPU they would have
model: {tiny_llama}
needs_gpu: true
budget: {{max_train_samples: 16, batch: 8, val_set_size: 8, r_ab: 4, target_modules: q_proj}}
methods:
- {{method: lora, lr: 1e-3, lr_source: test}}
- {{method: hira, lr: 1e-3, lr_source: test}}
benchmarks: boolq
evaluations:
- {{mode: loglik, samples: 4}}
""")
    out = tmp_path / "study"
    result = reproduce([str(study), "--gpus", "3,7"], out, data_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    trained = [json.loads(p.read_text().splitlines()[0]) for p in out.rglob("output.jsonl")]
    evaluated = [json.loads(p.read_text()) for p in out.rglob("output_*_eval.jsonl")]
    devices = [r["environment"]["cuda_visible_devices"] for r in (*trained, *evaluated)]
    assert len(devices) == 5 and set(devices) <= {"3", "7"}  # 2 trainings, 3 evaluations: one GPU each


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_to_the_driver_stops_the_study_as_ctrl_c_does(
    signal_name, tiny_llama, data_dir, tmp_path
) -> None:
    study, out = tmp_path / "long.yaml", tmp_path / "study"
    study.write_text(long_training_study(tiny_llama, "a training to interrupt"))
    driver = subprocess.Popen(reproduce_command([str(study)], out, data_dir), env=study_environment(out),
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    runs = out / "seed-36" / "results_lora"
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/checkpoint-*/trainer_state.json")):
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.1)
    driver.send_signal(getattr(signal, signal_name))  # to the driver alone, as kill and timeout do
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert "interrupted: the study was interrupted; rerun the same command to continue" in stderr
    (run,) = runs.iterdir()
    stopped = [json.loads(line) for line in (run / "output.jsonl").open()][-1]
    assert stopped["event"] == "interrupted" and stopped["signal"] == "SIGTERM"  # the training saved a checkpoint
