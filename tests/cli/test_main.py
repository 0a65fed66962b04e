"""The specification's interface end to end, as a user runs it: train_hira.py in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, timeout=600
    )


def train_hira(*flags: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return run([str(ROOT / "train_hira.py"), *flags], cwd, **env)


@pytest.fixture(scope="module")
def trained_run(tiny_neo: Path, data_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run with validation every 4 steps, trained for 8 steps."""
    workdir = tmp_path_factory.mktemp("cli")
    result = train_hira(
        "--peft_type=lora", f"--model_name={tiny_neo}", "--r_ab=4", "--target_modules=q_proj,v_proj",
        "--batch=4", "--grad_acc=2", "--lr=1e-2", "--epoch=1", "--load_bit=16", "--enable_grad_ckpt",
        "--dataset=commonsense_mix", "--seed=36", "--warmup=2", "--eval_strategy=steps", "--eval_steps=4",
        "--max_steps=8", "--max_train_samples=96", "--val_set_size=16", "--logging_steps=1", f"--data_dir={data_dir}",
        "--output_folder=results_lora",
        "--save_total_limit=0",  # keep every checkpoint: the hira protocol keeps only the best (official default 1)
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (workdir / "results_lora").iterdir()
    return run_dir


def test_training_writes_the_specification_layout(trained_run: Path) -> None:
    assert re.fullmatch(r"tiny_neo0-commonsense_mix-lora-lr=0\.01-seed=36-\d{8}-\d{6}", trained_run.name)
    assert {"checkpoint-4", "checkpoint-8", "output.jsonl", "trainer_state.json", "training_args.bin"} <= {
        p.name for p in trained_run.iterdir()
    }
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (trained_run / "checkpoint-8").iterdir()
    }

    first, last = [json.loads(line) for line in (trained_run / "output.jsonl").read_text().splitlines()]
    assert first["config"]["peft_type"] == "lora" and first["config"]["r_ab"] == 4 and first["config"]["lr"] == 0.01
    assert first["config"]["train_on_inputs"] is False and first["data"]["train_on_inputs"] is False
    assert first["config"]["protocol"] == "hira" and first["data"]["validation_rule"] == "shuffle-tail (seed 58)"
    assert first["config"]["weight_decay"] == 0.01 and first["precision_policy"]["weights"] == "float32"
    assert first["data"]["train_examples"] == 96 and first["data"]["validation_examples"] == 16
    assert first["precision"] == "float32"  # --load_bit 16 on CPU
    hidden, layers, r = 64, 2, 4
    assert first["parameters"]["trainable_params"] == layers * 2 * r * 2 * hidden
    assert set(first["environment"]) >= {"torch", "transformers", "peft", "git_revision"}

    assert last["event"] == "train_end" and last["global_step"] == 8
    assert last["train_time_s"] > 0 and last["peak_rss_gb"] > 0
    state = json.loads((trained_run / "trainer_state.json").read_text())
    eval_losses = [entry["eval_loss"] for entry in state["log_history"] if "eval_loss" in entry]
    assert len(eval_losses) == 2 and last["best_eval_loss"] == pytest.approx(min(eval_losses))
    best_step = 4 * (1 + eval_losses.index(min(eval_losses)))
    assert last["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    train_losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(train_losses) == 8 and train_losses[-1] < train_losses[0] and eval_losses[1] < eval_losses[0]
    assert torch.load(trained_run / "training_args.bin", weights_only=False).gradient_accumulation_steps == 2


def test_evaluation_writes_results_and_predictions(trained_run: Path, data_dir: str) -> None:
    checkpoint = trained_run / "checkpoint-8"
    result = train_hira(
        "--ckpt", str(checkpoint), "--dataset", "boolq", "--batch=4", "--beam_size=2", "--max_new_tokens=4",
        "--max_eval_samples=6", f"--data_dir={data_dir}", cwd=trained_run,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((checkpoint / "output_boolq_eval.jsonl").read_text())
    predictions = json.loads((checkpoint / "predictions_boolq.json").read_text())
    assert record["total"] == len(predictions) == 6 and record["dataset_size"] == 3270
    assert record["correct"] == sum(p["correct"] for p in predictions)
    assert record["accuracy"] == pytest.approx(record["correct"] / 6)
    assert record["peft_type"] == "lora" and record["mode"] == "generate" and record["ckpt"] == str(checkpoint)
    assert record["eval_config"]["beam_size"] == 2 and record["dataset_version"] and len(record["data_sha256"]) == 16
    for prediction in predictions:
        assert prediction["prompt"].endswith("### Response:\n")
        assert prediction["correct"] == (prediction["predicted"] == prediction["answer"])
        assert prediction["predicted"] in ("", "true", "false")


def test_analysis_table_over_methods(trained_run: Path, tmp_path: Path) -> None:
    result = run(["-m", "peftbench.cli", "analyze", str(trained_run.parent), "--out", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((trained_run / "checkpoint-8" / "output_boolq_eval.jsonl").read_text())
    csv_rows = (tmp_path / "accuracy.csv").read_text().splitlines()
    assert csv_rows[0] == "method,boolq,avg,n_datasets"
    accuracy = f"{100 * record['accuracy']:.2f}"
    assert csv_rows[1] == f"lora,{accuracy} (n={record['total']}),{accuracy},1"
    assert "| lora |" in result.stdout and (tmp_path / "accuracy.md").read_text() in result.stdout


BAD_INPUTS = [
    (["--peft_type=adapterx"], "invalid choice: 'adapterx'"),
    (["--peft_type=lora", "--dataset=mmlu"], "unknown dataset 'mmlu'"),
    (["--peft_type=hira", "--r_ab=0"], "--r_ab must be a positive integer for hira"),
    (["--peft_type=lora", "--dataset=common_170k", "--data_dir=/nonexistent"], "no train data for common_170k"),
    (["--peft_type=lora", "--target_modules=query"], "--target_modules query not found in the model; its linear"),
    (["--peft_type=lora", "--model_name=no-such-org/no-such-model"], "--model_name smollm2-135m (embedded)"),
    (["--ckpt=CKPT_WITHOUT_RECORD", "--dataset=boolq"], "no output.jsonl in"),
    (["--ckpt=x", "--peft_type=lora"], "--peft_type is a training flag"),
    (["--peft_type=lora", "--beam_size=4"], "--beam_size applies to evaluation only"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_INPUTS)
def test_bad_input_gives_one_error_line_and_exit_2(
    flags: list[str], message: str, tiny_neo: Path, data_dir: str, tmp_path: Path
) -> None:
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text("{}")
    flags = [f.replace("CKPT_WITHOUT_RECORD", str(ckpt)) for f in flags]
    defaults = [] if any(f.startswith(("--ckpt", "--model_name")) for f in flags) else [f"--model_name={tiny_neo}"]
    if not any(f.startswith("--data_dir") for f in flags):
        defaults.append(f"--data_dir={data_dir}")
    if not any(f.startswith(("--dataset", "--ckpt")) for f in flags):
        defaults.append("--dataset=commonsense_mix")  # what the local data can train offline
    result = train_hira(*defaults, *flags, cwd=tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_baseline_scripts_evaluate_all_datasets_skip_missing_ones_and_analyze(
    trained_run: Path, tmp_path: Path
) -> None:
    """The specification's scripts, with a data folder that lacks PIQA: it is reported, the rest go on."""
    partial_data = tmp_path / "data"
    (partial_data / "boolq").mkdir(parents=True)
    examples = json.loads(
        (Path(__file__).resolve().parents[3] / "shared/data/llm_adapters/boolq/test.json").read_text()
    )
    (partial_data / "boolq" / "test.json").write_text(json.dumps(examples[:10]))
    workdir = trained_run.parent.parent  # holds results_lora/
    env = {**os.environ, "DATASETS": "boolq,piqa", "MAX_EVAL_SAMPLES": "3", "BATCH": "3", "BEAM_SIZE": "1",
           "MAX_NEW_TOKENS": "3", "DATA_DIR": str(partial_data), "PYTHON": sys.executable}  # fmt: skip
    script = ROOT / "baseline_test" / "lora_all_dataset.sh"
    result = subprocess.run(["bash", str(script)], cwd=workdir, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping piqa: no test data for piqa" in result.stderr
    best = Path(json.loads((trained_run / "output.jsonl").read_text().splitlines()[-1])["best_checkpoint"])
    assert json.loads((best / "output_boolq_eval.jsonl").read_text())["total"] == 3
    assert not (best / "output_piqa_eval.jsonl").exists()

    analysis = subprocess.run(
        ["bash", str(ROOT / "baseline_test" / "analyze_all_methods.sh")],
        cwd=workdir, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    assert "| method | boolq | avg | n_datasets |" in analysis.stdout
    assert (workdir / "results_analysis" / "accuracy.csv").read_text().startswith("method,boolq,avg,n_datasets\nlora,")


def test_export_writes_a_merged_plain_model(trained_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from peftbench.runs.checkpoint import load_trained

    result = run(["-m", "peftbench.cli", "export", "--ckpt", str(trained_run), "--out", str(tmp_path / "m")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    adapted, _, _ = load_trained(trained_run / "checkpoint-8", torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, merged.config.vocab_size, (1, 9))
    torch.testing.assert_close(merged(input_ids=ids).logits, adapted.eval()(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
