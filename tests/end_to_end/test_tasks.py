"""The math and dialogue tasks end to end on a tiny model: train on MetaMathQA or ConvAI2 in their publishers'
schemas (the loss falls), evaluate GSM8K and ConvAI2 from the run, and analyze the runs with a commonsense result
beside them, each task in its own table."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from task_files import write_convai2, write_metamath
from tiny import LLM_ADAPTERS

from peftbench.config import EvalConfig, RunConfig
from peftbench.evaluate.runner import evaluate
from peftbench.report.analysis import analyze
from peftbench.train.recipe import train


def _train(dataset: str, model: Path, data_dir: str, out: Path) -> Path:
    config = RunConfig(peft_type="lora", model_name=str(model), dataset=dataset, lr=1e-2, r_ab=4, batch=4,
                       max_steps=6, val_set_size=8, eval_strategy="steps", eval_steps=3, logging_steps=1,
                       data_dir=data_dir, output_folder=str(out))  # fmt: skip
    return train(config).run_dir


def _losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_metamath_trains_and_gsm8k_evaluates_from_the_run(tiny_llama: Path, tmp_path: Path) -> None:
    data = f"{write_metamath(tmp_path / 'data')},{LLM_ADAPTERS}"
    run_dir = _train("metamath", tiny_llama, data, tmp_path / "math")
    record = json.loads((run_dir / "output.jsonl").read_text().splitlines()[0])
    assert record["config"]["max_length"] == 155  # the protocol's math variant filled what was left unset
    assert record["data"]["protocol"] == "hira" and record["data"]["validation_examples"] == 8
    losses = _losses(run_dir)
    assert losses[-1] < losses[0]
    (result,) = evaluate(EvalConfig(ckpt=str(run_dir), dataset="gsm8k", max_eval_samples=2, max_new_tokens=4,
                                    beam_size=1, data_dir=data))  # fmt: skip
    assert result["scorer"] == "hira-number" and result["total"] == 2 and result["peft_type"] == "lora"


def test_convai2_trains_evaluates_and_analyzes_beside_commonsense(tiny_llama: Path, tmp_path: Path) -> None:
    data = f"{write_convai2(tmp_path / 'data', episodes=2)},{LLM_ADAPTERS}"
    run_dir = _train("convai2", tiny_llama, data, tmp_path / "dialogue")
    assert json.loads((run_dir / "output.jsonl").read_text().splitlines()[0])["config"]["max_length"] == 512
    losses = _losses(run_dir)
    assert losses[-1] < losses[0]
    settings = {"ckpt": str(run_dir), "max_new_tokens": 4, "beam_size": 1, "data_dir": data, "bert_score_model": "none"}
    (dialogue,) = evaluate(EvalConfig(dataset="convai2", **settings))
    assert dialogue["not_computed"]["bert_f1"] and dialogue["total"] == 5
    _, gsm8k_result = evaluate(EvalConfig(dataset="boolq,gsm8k", max_eval_samples=3, **settings))
    zero_shot = {
        **settings,
        "ckpt": None,
        "model_name": str(tiny_llama),
        "output_dir": str(tmp_path / "dialogue" / "zero"),
    }
    evaluate(EvalConfig(dataset="convai2", **zero_shot))

    markdown = analyze([tmp_path / "dialogue"], tmp_path / "analysis")
    assert markdown.startswith("commonsense:\n| method | boolq |") and "\n\nmath:\n| method | gsm8k |" in markdown
    assert "\n\ndialogue:\n| method | bleu | bleu_1 |" in markdown
    analysis = tmp_path / "analysis"
    assert (analysis / "accuracy.md").read_text().splitlines()[0] == "| method | boolq | avg | n_datasets |"
    assert (analysis / "accuracy_math.md").read_text().splitlines()[0] == "| method | gsm8k | avg | n_datasets |"
    math_cells = json.loads((analysis / "stats_math.json").read_text())["cells"]
    (gsm8k,) = [c for c in math_cells if c["dataset"] == "gsm8k"]
    assert gsm8k["ci95"] == gsm8k_result["accuracy_ci"]  # the record's interval is the analysis's
    header, *rows = csv.reader((analysis / "dialogue.csv").read_text().splitlines())
    assert header[:3] == ["method", "bleu", "bleu_1"] and header[-1] == "avg6"
    assert [row[0] for row in rows] == ["zero-shot", "lora"]
    lora = dict(zip(header, rows[1], strict=True))
    assert lora["bert_f1"] == "not computed" and lora["avg6"] == "not computed"
    assert (
        lora["f1"] == f"{100 * dialogue['f1']:.2f} [{100 * dialogue['f1_ci'][0]:.2f}, {100 * dialogue['f1_ci'][1]:.2f}]"
    )
    report = (analysis / "report.md").read_text()
    assert "## Commonsense" in report and "## Math" in report and "## Dialogue" in report
    assert "bert_f1: BERTScore" in report or "bert_f1: " in report
    tests = re.findall(r"^\| zero-shot \| convai2 \| (\w+) \| ([0-9.e-]+) \| ([0-9.e-]+) \|$", report, re.MULTILINE)
    assert {"bleu", "meteor", "rouge_l", "f1", "dist_1"} <= {metric for metric, _, _ in tests}  # paired, vs lora
    assert all(0 < float(p) <= float(holm) <= 1 for _, p, holm in tests)
    assert (analysis / "report.html").is_file() and (analysis / "report_math.html").is_file()
