"""The real model end to end: the embedded SmolLM2-135M learns the answer format (slow: ~4.5 minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftbench.config import EvalConfig, RunConfig
from peftbench.evaluate.runner import evaluate
from peftbench.train.recipe import train

pytestmark = pytest.mark.slow


def test_hira_on_smollm2_learns_to_answer_in_the_benchmark_format(tmp_path: Path, data_dir: str) -> None:
    result = train(
        RunConfig(
            peft_type="hira",
            model_name="smollm2-135m",
            r_ab=16,
            target_modules="q_proj,k_proj,v_proj,up_proj,down_proj",
            batch=8,
            lr=2e-3,
            warmup=4,
            max_steps=24,
            max_train_samples=192,
            val_set_size=16,
            eval_strategy="steps",  # the hira protocol's default is once per epoch
            eval_steps=12,
            logging_steps=1,
            output_folder=str(tmp_path / "results_hira"),
            data_dir=data_dir,
        )  # fmt: skip
    )
    state = json.loads((result.run_dir / "trainer_state.json").read_text())
    eval_losses = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert len(eval_losses) == 2 and eval_losses[1] < eval_losses[0]
    q, k, v, up, down = 576 + 576, 576 + 192, 576 + 192, 576 + 1536, 1536 + 576  # in + out per module
    assert result.metrics["trainable_params"] == 30 * 16 * (q + k + v + up + down)

    (record,) = evaluate(
        EvalConfig(
            ckpt=str(result.checkpoint),
            dataset="boolq",
            batch=8,
            beam_size=2,
            max_new_tokens=8,
            max_eval_samples=8,
            data_dir=data_dir,
        )  # fmt: skip
    )
    predictions = json.loads((result.checkpoint / "predictions_boolq.json").read_text())
    # Untrained, SmolLM2-Instruct answers in prose and no keyword is found; after 24 steps it answers in the format.
    assert record["no_answer"] <= 2, [p["generated"] for p in predictions]
    assert sum("the correct answer is" in p["generated"] for p in predictions) >= 6
