"""Runs that survive: SIGTERM + resume, divergence and disk guards, checkpoint limits."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
from launch import finish, flags, losses, records, train_hira
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState

from peftbench.train.callbacks import DiskSpaceGuard


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
