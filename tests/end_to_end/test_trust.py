"""Paths that used to give a wrong number, or lose a result, without a word (one test per path)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerState, TrainingArguments

from peftbench.config import EvalConfig, RunConfig
from peftbench.data import sources
from peftbench.errors import UserError
from peftbench.evaluate.runner import evaluate
from peftbench.models.load import load_base_model
from peftbench.models.precision import choose_precision
from peftbench.runs.folders import resolve_checkpoint
from peftbench.runs.records import load_run_config, read_records
from peftbench.train.loss import label_loss_totals
from peftbench.train.recipe import train
from peftbench.train.validation import checkpoint_selection


@pytest.fixture
def bf16_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


def _fraction_changed(model: torch.nn.Module, autocast: bool, steps: int = 10) -> float:
    """Fraction of weights that moved after `steps` AdamW steps at the specification's FFT rate, lr = 1e-5."""
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    ids = torch.arange(model.config.vocab_size).reshape(4, -1)  # every token, so every embedding row has a gradient
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before, strict=True))
    return changed / sum(b.numel() for b in before)


def test_full_finetuning_in_bf16_keeps_fp32_master_weights_so_every_update_lands(bf16_gpu, tiny_llama) -> None:
    precision = choose_precision(16, full_finetune=True)
    assert precision.dtype == torch.float32 and precision.bf16  # fp32 storage, bf16 compute
    assert choose_precision(16).dtype == torch.bfloat16  # adapters: the frozen base stays in bf16
    model = load_base_model(str(tiny_llama), precision.dtype)
    policy = precision.policy(model)
    assert policy["trainable_state_bytes_per_param"] == 16 and policy["trainable_dtypes"] == ["float32"]
    assert policy["trainable_state_gb"] == round(16 * sum(p.numel() for p in model.parameters()) / 2**30, 3)

    ours = _fraction_changed(model, autocast=precision.bf16)
    pure_bf16 = _fraction_changed(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16), False)
    assert ours > 0.99
    assert pure_bf16 < 0.2  # most bf16 weights never move at lr 1e-5


def test_validation_with_batch_1_and_label_free_examples_still_chooses_a_checkpoint(
    tiny_neo, data_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    # OBQA prompts are 150-211 tokens long here: cut together with the answer at 175 (llm-adapters' rule; hira
    # always keeps the answer), about half of them keep no label token.
    config = RunConfig(
        protocol="llm-adapters", train_on_inputs=False, peft_type="lora", model_name=str(tiny_neo), dataset="obqa",
        r_ab=4, batch=1, lr=1e-2, max_steps=4,
        eval_strategy="steps", eval_steps=2, val_set_size=12, max_train_samples=40, max_length=175, data_dir=data_dir,
        output_folder=str(tmp_path / "results"),
    )  # fmt: skip
    result = train(config)
    first = read_records(result.run_dir / "output.jsonl")[0]
    state = json.loads((result.run_dir / "trainer_state.json").read_text())
    evaluations = [e for e in state["log_history"] if "eval_loss" in e]
    assert len(evaluations) == 2 and all(math.isfinite(e["eval_loss"]) for e in evaluations)
    assert all(0 < e["eval_batches_without_labels"] < 12 for e in evaluations)  # these batches were NaN before
    assert result.metrics["checkpoint_selection"] == "best eval_loss on the validation set"
    assert math.isfinite(result.metrics["best_eval_loss"]) and result.metrics["best_eval_loss"] == min(
        e["eval_loss"] for e in evaluations
    )
    # Training examples without a label token are dropped (and counted): no step can divide 0 by 0.
    assert 0 < first["data"]["dropped_without_labels"] < 40


def test_a_batch_without_label_tokens_adds_nothing_to_the_validation_loss() -> None:
    logits = torch.randn(3, 5, 11)
    labels = torch.full((3, 5), -100)
    assert label_loss_totals(logits, labels).tolist() == [0.0, 0.0]  # not NaN
    labels[1, 2:] = torch.tensor([1, 2, 3])
    total, count = label_loss_totals(logits, labels).tolist()
    reference = torch.nn.functional.cross_entropy(logits[1, 1:4], torch.tensor([1, 2, 3]), reduction="sum")
    assert count == 3 and total == pytest.approx(float(reference), rel=1e-6)


def test_a_run_whose_validation_cannot_choose_says_so(tmp_path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", load_best_model_at_end=True,
                             metric_for_best_model="eval_loss", greater_is_better=False, report_to="none")  # fmt: skip
    state = TrainerState(best_metric=float("inf"))
    assert checkpoint_selection(args, state).startswith("last: no checkpoint could be chosen by validation")
    state.best_model_checkpoint = str(tmp_path / "checkpoint-2")
    assert checkpoint_selection(args, state) == "best eval_loss on the validation set"


def _zero_shot(model: Path, out: Path, data_dir: str, **settings) -> dict:
    settings = {"max_eval_samples": 8, **settings}
    config = EvalConfig(model_name=str(model), dataset="boolq", eval_mode="loglik", output_dir=str(out),
                        data_dir=data_dir, **settings)  # fmt: skip
    return evaluate(config)[0]


def test_a_result_is_never_reused_for_another_model_or_replaced_by_a_smaller_sample(
    tiny_neo, tiny_llama, data_dir, tmp_path
) -> None:
    out = tmp_path / "zero_shot"
    first = _zero_shot(tiny_neo, out, data_dir)
    second = _zero_shot(tiny_llama, out, data_dir)
    assert second["model_name"] == str(tiny_llama) and second["model_fingerprint"] != first["model_fingerprint"]
    predictions = json.loads((out / "predictions_boolq_loglik.json").read_text())
    assert second["correct"] == sum(p["correct"] for p in predictions) and len(predictions) == 8
    assert _zero_shot(tiny_llama, out, data_dir)["environment"] == second["environment"]  # same model: reused

    with pytest.raises(UserError, match="holds this model's result on 8 examples; this evaluation of 4"):
        _zero_shot(tiny_llama, out, data_dir, max_eval_samples=4)
    assert _zero_shot(tiny_llama, out, data_dir, max_eval_samples=4, overwrite=True)["total"] == 4


def test_a_torn_record_line_is_skipped_with_a_warning(tmp_path, caplog) -> None:
    run = tmp_path / "results_lora" / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "adapter_config.json").write_text("{}")
    config = {"peft_type": "lora", "model_name": "m", "dataset": "boolq", "lr": 0.001}
    end = {"event": "train_end", "best_checkpoint": str(run / "checkpoint-2")}
    (run / "output.jsonl").write_text(json.dumps({"config": config}) + "\n" + json.dumps(end) + '\n{"event": "res')
    with caplog.at_level(logging.WARNING):
        assert len(read_records(run / "output.jsonl")) == 2
    assert f"{run / 'output.jsonl'} line 3: skipped, not valid JSON" in caplog.text
    assert resolve_checkpoint(run) == run / "checkpoint-2"
    assert load_run_config(run / "checkpoint-2").lr == 0.001


def test_two_evaluations_of_one_checkpoint_at_once_both_finish(tiny_neo, data_dir, tmp_path) -> None:
    out = tmp_path / "shared_out"
    command = [sys.executable, "-m", "peftbench.cli", "eval", "--model_name", str(tiny_neo), "--dataset", "boolq",
               "--eval_mode", "loglik", "--max_eval_samples", "24", "--output_dir", str(out),
               "--data_dir", data_dir]  # fmt: skip
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    record = read_records(out / "output_boolq_loglik_eval.jsonl")[-1]
    predictions = json.loads((out / "predictions_boolq_loglik.json").read_text())
    assert record["total"] == len(predictions) == 24 and record["correct"] == sum(p["correct"] for p in predictions)
    assert not list(out.glob(".*partial"))  # no temporary file left behind


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str]]:
    from peftbench.cli.app import main

    code = main(list(argv))
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def _bad_records(count: int) -> list[dict]:
    return [{"instruction": f"question {i}", "input": "", "output": "maybe", "answer": "maybe"} for i in range(count)]


@pytest.fixture
def bad_data(tmp_path: Path) -> Path:
    """boolq: an empty test set and an empty training set; piqa: 25 mislabelled records; siqa: not JSON."""
    root = tmp_path / "bad_data"
    for folder, name, content in (("boolq", "test.json", "[]"), ("boolq", "train.json", "[]"),
                                  ("piqa", "test.json", json.dumps(_bad_records(25))),
                                  ("social_i_qa", "test.json", "[{not json")):  # fmt: skip
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text(content)
    return root


def test_each_bad_input_gives_one_error_line(tiny_neo, data_dir, bad_data, tmp_path, capsys) -> None:
    zero_shot = ("eval", "--model_name", str(tiny_neo), "--output_dir", str(tmp_path / "out"), "--eval_mode", "loglik",
                 "--max_eval_samples", "4", "--data_dir", f"{bad_data},{data_dir}")  # fmt: skip
    checks = [
        (("eval", "--ckpt", str(bad_data / "boolq" / "test.json")), "is a file; give a checkpoint-N folder"),
        ((*zero_shot, "--dataset", "boolq"), f"no test examples to evaluate in {bad_data / 'boolq' / 'test.json'}"),
        ((*zero_shot, "--dataset", "piqa"), "25 bad record(s): example 0: has answer 'maybe'"),
        (("train", "--model_name", str(tiny_neo), "--dataset", "boolq", "--data_dir", str(bad_data)),
         f"no training examples in {bad_data / 'boolq' / 'train.json'}"),
        (("train", "--model_name", str(tiny_neo), "--max_train_samples", "0"), "--max_train_samples must be positive"),
    ]  # fmt: skip
    for argv, message in checks:
        code, errors = _cli(capsys, *argv)
        assert code == 2 and len(errors) == 1 and message in errors[0], (argv, errors)
    _, (refused,) = _cli(capsys, *zero_shot, "--dataset", "piqa")
    named = [f"example {i}: has answer 'maybe'" for i in range(25)]
    assert all(n in refused for n in named[:20]) and named[20] not in refused and "; and 5 more" in refused


def test_a_benchmark_that_cannot_be_evaluated_does_not_stop_the_others(tiny_neo, data_dir, bad_data, tmp_path, capsys):
    out = tmp_path / "out"
    code, errors = _cli(capsys, "eval", "--model_name", str(tiny_neo), "--output_dir", str(out), "--eval_mode",
                        "loglik", "--max_eval_samples", "4", "--data_dir", f"{bad_data},{data_dir}",
                        "--dataset", "boolq,piqa,siqa,winogrande")  # fmt: skip
    assert code == 0 and not errors
    assert sorted(p.name for p in out.glob("output_*")) == ["output_winogrande_loglik_eval.jsonl"]


def test_data_stats_shows_bad_and_unreadable_files_as_rows(bad_data) -> None:
    from tiny import make_tokenizer

    from peftbench.data.tools import stats_rows

    rows = {(r[0], r[1]): r for r in stats_rows(["boolq", "piqa", "siqa"], str(bad_data), make_tokenizer(), 64)}
    assert rows[("boolq", "test")][2:4] == ["0", "0"]
    assert rows[("piqa", "test")][2:4] == ["0", "25"]  # 25 bad records, shown
    assert rows[("siqa", "test")][2].startswith(
        f"unavailable: {bad_data / 'social_i_qa' / 'test.json'}: not valid JSON"
    )


@pytest.fixture
def online(monkeypatch):
    """An online process: the conftest's HF_HUB_OFFLINE lifted for one test, and the hub's memory of failures clean."""
    import datasets
    import huggingface_hub.constants

    from peftbench import hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setattr(hub, "_network_failure", [])
    monkeypatch.setattr(hub, "_resolved", {})
    return hub


def test_a_hub_that_fails_on_the_network_is_asked_once(online, monkeypatch, tmp_path) -> None:
    import huggingface_hub

    from peftbench.data.tools import stats_rows

    attempts = []

    def unreachable(self, repo_id: str, **kwargs):
        attempts.append(repo_id)
        raise ConnectionError(f"Couldn't reach '{repo_id}' on the Hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    monkeypatch.setattr(online, "unreachable", lambda: None)  # the host answers; the request fails
    from tiny import make_tokenizer

    rows = stats_rows(["boolq", "piqa", "siqa", "winogrande"], str(tmp_path), make_tokenizer(), 64)
    assert len(rows) == 1 + 8 and all(r[2].startswith("unavailable: no ") for r in rows[1:])
    assert all("does not answer" in r[2] for r in rows[1:])
    assert attempts == ["google/boolq"]  # one request; the seven other splits fail at once with its line


def test_an_endpoint_that_does_not_answer_is_one_line_before_any_download(online, monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(online, "unreachable", lambda: "127.0.0.1:9: Connection refused")
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: pytest.fail("no download may start"))
    with pytest.raises(UserError, match=r"no train data for piqa: .*the Hugging Face hub at \S+ does not answer "
                                        r"\(127.0.0.1:9: Connection refused\)"):  # fmt: skip
        sources.load_train_examples("piqa", "/nonexistent")
