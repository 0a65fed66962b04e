"""Runs that survive: SIGTERM + resume, divergence and disk guards, checkpoint limits, two-process DDP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState

from peftbench.guards import DiskSpaceGuard

ROOT = Path(__file__).resolve().parents[1]


def flags(model: Path, data_dir: str, **overrides: object) -> list[str]:
    settings = {"peft_type": "lora", "model_name": model, "r_ab": 4, "batch": 4, "lr": 1e-2, "max_steps": 40,
                "max_train_samples": 400, "val_set_size": 0, "eval_strategy": "steps", "eval_steps": 2,
                "logging_steps": 1, "data_dir": data_dir, "output_folder": "results"}  # fmt: skip
    settings.update(overrides)
    return [f"--{key}={value}" for key, value in settings.items() if value is not None]


def train_hira(args: list[str], cwd: Path, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train_hira.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "output.jsonl").read_text().splitlines()]


def losses(run_dir: Path, step: int) -> list[tuple[int, float]]:
    history = json.loads((run_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def test_sigterm_saves_a_checkpoint_and_resume_ends_where_an_uninterrupted_run_ends(tiny_neo, data_dir, tmp_path):
    reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
    reference_dir.mkdir(), interrupted_dir.mkdir()
    args = flags(tiny_neo, data_dir)  # LoRA dropout 0.05 stays on: its RNG state must be restored too
    reference = train_hira(args, reference_dir)

    process = train_hira(args, interrupted_dir)
    deadline = time.time() + 300
    while not list(interrupted_dir.glob("results/*/checkpoint-2/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    code, stderr = finish(process)
    assert code == 130, stderr[-3000:]
    (run_dir,) = (interrupted_dir / "results").iterdir()
    (message,) = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    stopped = records(run_dir)[-1]
    assert stopped["event"] == "interrupted" and stopped["signal"] == "SIGTERM"
    step = int(Path(stopped["checkpoint"]).name.split("-")[1])
    assert 2 <= step < 40 and "resume with the same command plus --resume" in message
    assert (run_dir / f"checkpoint-{step}" / "trainer_state.json").is_file()

    code, stderr = finish(train_hira([*args, "--resume"], interrupted_dir))
    assert code == 0, stderr[-3000:]
    assert [p.name for p in (interrupted_dir / "results").iterdir()] == [run_dir.name]  # same folder
    events = [r.get("event") for r in records(run_dir)]
    assert events == [None, "interrupted", "resume", "train_end"]

    code, stderr = finish(reference)
    assert code == 0, stderr[-3000:]
    (reference_run,) = (reference_dir / "results").iterdir()
    ours = load_file(run_dir / "checkpoint-40" / "adapter_model.safetensors")
    theirs = load_file(reference_run / "checkpoint-40" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)
    resumed_losses, reference_losses = losses(run_dir, 40), losses(reference_run, 40)
    assert [s for s, _ in resumed_losses] == [s for s, _ in reference_losses] == list(range(1, 41))
    assert [loss for _, loss in resumed_losses] == pytest.approx([loss for _, loss in reference_losses], abs=1e-5)


def test_resume_without_an_unfinished_run_starts_a_new_one(tiny_neo, data_dir, tmp_path):
    code, stderr = finish(train_hira([*flags(tiny_neo, data_dir, max_steps=2), "--resume"], tmp_path))
    assert code == 0, stderr[-3000:]
    assert len(list((tmp_path / "results").iterdir())) == 1


def test_a_nan_loss_stops_the_run_naming_the_step(tiny_neo, data_dir, tmp_path):
    code, stderr = finish(
        train_hira(flags(tiny_neo, data_dir, peft_type="fft", r_ab=None, lr=1e12, max_steps=20), tmp_path)
    )
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, stderr[-3000:]
    assert "training loss became nan at step" in errors[0] and "try --load_bit 32 or a lower --lr" in errors[0]
    (run_dir,) = (tmp_path / "results").iterdir()
    assert records(run_dir)[-1]["event"] == "diverged"


def test_checkpoint_limit_keeps_the_best(tiny_neo, data_dir, tmp_path):
    args = flags(tiny_neo, data_dir, max_steps=12, val_set_size=16, eval_steps=2, save_total_limit=1, lr=0.5)
    code, stderr = finish(train_hira(args, tmp_path))
    assert code == 0, stderr[-3000:]
    (run_dir,) = (tmp_path / "results").iterdir()
    best = Path(records(run_dir)[-1]["best_checkpoint"])
    kept = {p.name for p in run_dir.glob("checkpoint-*")}
    # A finished run with a limit of 1 keeps the best; the Trainer keeps the last as well only while training.
    assert best.name in kept and len(kept) <= 2


def test_disk_guard_skips_a_checkpoint_that_would_not_fit(tiny_neo, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_neo)
    guard = DiskSpaceGuard(model, tmp_path, saves_full_model=True)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert guard.needed_bytes == int(1.1 * 3 * weights)  # weights + two AdamW moments, all trainable
    control, state = TrainerControl(should_save=True), TrainerState(global_step=7)
    monkeypatch.setattr("shutil.disk_usage", lambda path: _Usage(free=1000))
    guard.on_step_end(None, state, control)
    assert not control.should_save and control.should_training_stop and guard.shortfall == (7, 1000)


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# LoRA; prefix tuning (PEFT's prompt encoder outside the model); AdaLoRA (rank allocation from synchronised
# gradients, whose float sums differ in order between one and two processes: its masks and the regulariser
# amplify that to ~2e-5 after 6 steps).
DDP_CASES = {
    "lora": ({"lora_dropout": 0.0}, 1e-5),
    "prefix": ({"r_ab": None, "virtual_tokens": 4, "lr": 3e-2}, 1e-5),
    "adalora": ({"lora_dropout": 0.0}, 1e-4),
}


@pytest.mark.parametrize("method", DDP_CASES)
def test_two_processes_reach_the_weights_of_one_process_with_the_doubled_batch(method, tiny_neo, data_dir, tmp_path):
    settings, atol = DDP_CASES[method]
    common = {"peft_type": method, **settings, "max_steps": 6, "max_train_samples": 96, "eval_steps": 6}
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir(), ddp_dir.mkdir()
    code, stderr = finish(train_hira(flags(tiny_neo, data_dir, batch=8, **common), single_dir))
    assert code == 0, stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                str(ROOT / "train_hira.py"), *flags(tiny_neo, data_dir, batch=4, **common)]  # fmt: skip
    result = subprocess.run(torchrun, cwd=ddp_dir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (single_run,) = (single_dir / "results").iterdir()
    (ddp_run,) = (ddp_dir / "results").iterdir()  # one folder, made by process 0
    assert records(ddp_run)[0]["processes"] == 2
    ours = load_file(ddp_run / "checkpoint-6" / "adapter_model.safetensors")
    theirs = load_file(single_run / "checkpoint-6" / "adapter_model.safetensors")
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=atol)


def test_evaluation_sharded_over_two_processes_equals_one_process(tiny_llama, data_dir, tmp_path):
    def evaluate(processes: int, folder: Path, mode: str) -> list[dict]:
        args = ["eval", f"--model_name={tiny_llama}", f"--output_dir={folder}", "--dataset=siqa", f"--eval_mode={mode}",
                "--max_eval_samples=7", "--beam_size=2", "--max_new_tokens=3", f"--data_dir={data_dir}"]  # fmt: skip
        launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={_free_port()}"]
        command = [sys.executable, *(launcher if processes > 1 else []), "-m", "peftbench.cli", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        suffix = "" if mode == "generate" else "_loglik"
        record = json.loads((folder / f"output_siqa{suffix}_eval.jsonl").read_text())
        assert record["processes"] == processes and record["total"] == 7
        return json.loads((folder / f"predictions_siqa{suffix}.json").read_text())

    for mode in ("generate", "loglik"):
        one, two = evaluate(1, tmp_path / f"one-{mode}", mode), evaluate(2, tmp_path / f"two-{mode}", mode)
        assert [p["index"] for p in two] == sorted(p["index"] for p in two)
        assert [(p["index"], p["predicted"]) for p in two] == [(p["index"], p["predicted"]) for p in one]
        if mode == "loglik":
            flat = [score for p in two for score in p["logprobs"]]
            assert flat == pytest.approx([score for p in one for score in p["logprobs"]], abs=1e-4)
