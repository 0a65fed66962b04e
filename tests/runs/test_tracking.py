"""--report_to: a training run's losses and its evaluations' accuracies in one tracker run (TensorBoard, offline)."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from peftbench import cli
from peftbench.errors import UserError
from peftbench.runs.records import read_records


def test_tensorboard_holds_the_training_and_validation_losses_and_the_evaluations(tiny_neo, data_dir, tmp_path):
    out = tmp_path / "results"
    train = ["train", "--peft_type", "lora", "--model_name", str(tiny_neo), "--r_ab", "4", "--batch", "4",
             "--max_steps", "4", "--max_train_samples", "32", "--val_set_size", "8", "--eval_strategy", "steps",
             "--eval_steps", "2", "--logging_steps", "1", "--data_dir", data_dir, "--output_folder", str(out),
             "--report_to", "tensorboard"]  # fmt: skip
    assert cli.main(train) == 0
    (run,) = out.iterdir()
    tracking = read_records(run / "output.jsonl")[0]["tracking"]
    assert tracking == {"report_to": "tensorboard", "tensorboard_dir": str(run / "tensorboard")}
    evaluation = ["eval", "--ckpt", str(run / "checkpoint-4"), "--dataset", "boolq,piqa", "--eval_mode", "loglik",
                  "--max_eval_samples", "4", "--data_dir", data_dir, "--report_to", "tensorboard"]  # fmt: skip
    assert cli.main(evaluation) == 0

    events = EventAccumulator(tracking["tensorboard_dir"])
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    logged = {e["step"]: e["loss"] for e in history if "loss" in e}
    validated = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    assert sorted(scalars["train/loss"]) == sorted(logged) == [1, 2, 3, 4]
    assert scalars["train/loss"] == pytest.approx(logged, rel=1e-6)
    assert scalars["eval/loss"] == pytest.approx(validated, rel=1e-6) and sorted(validated) == [2, 4]
    for dataset in ("boolq", "piqa"):
        record = read_records(run / "checkpoint-4" / f"output_{dataset}_loglik_eval.jsonl")[-1]
        assert scalars[f"eval_loglik/{dataset}"] == {4: pytest.approx(record["accuracy"])}


def test_an_unknown_tracker_is_one_error(tiny_neo) -> None:
    from peftbench.config import RunConfig

    with pytest.raises(UserError, match="--report_to 'comet': choose one of none, tensorboard"):
        RunConfig(peft_type="lora", report_to="comet")
