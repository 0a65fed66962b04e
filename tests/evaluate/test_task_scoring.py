"""Math and dialogue evaluations through the runner on a tiny model: the task's scorer, its record (every figure
under its own key, intervals beside them, what could not be computed with its reason) and its predictions file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from task_files import write_convai2
from tiny import LLM_ADAPTERS

from peftbench.config import EvalConfig
from peftbench.errors import UserError
from peftbench.evaluate.dialogue_metrics import DIALOGUE_METRICS
from peftbench.evaluate.intervals import bootstrap_ci
from peftbench.evaluate.math_answers import hira_correct, hira_number
from peftbench.evaluate.runner import evaluate


def test_gsm8k_is_scored_by_hiras_number_rule(tiny_llama: Path, tmp_path: Path) -> None:
    config = EvalConfig(model_name=str(tiny_llama), dataset="gsm8k", max_eval_samples=3, max_new_tokens=6,
                        beam_size=2, output_dir=str(tmp_path), data_dir=str(LLM_ADAPTERS))  # fmt: skip
    (record,) = evaluate(config)
    assert (record["task"], record["scorer"], record["metrics"]) == ("math", "hira-number", ["accuracy"])
    assert record["protocol_settings"]["task"] == "math" and record["prompt_template"].startswith("hira/math:")
    assert record["eval_config"]["max_new_tokens"] == 6 and record["eval_config"]["beam_size"] == 2
    predictions = json.loads((tmp_path / "predictions_gsm8k.json").read_text())
    assert len(predictions) == 3
    for row in predictions:  # the extracted answer is null when the text holds none, and the verdict is the rule's
        expected = hira_number(row["generated"])
        assert row["predicted"] == (None if expected is None else str(expected))
        assert row["correct"] == hira_correct(row["generated"], row["answer"])
    assert record["no_answer"] == sum(p["predicted"] is None for p in predictions)
    assert record["accuracy"] == sum(p["correct"] for p in predictions) / 3
    low, high = record["accuracy_ci"]  # beside it, the interval the analysis gives the cell
    assert record["accuracy_ci"] == list(bootstrap_ci([p["correct"] for p in predictions]))
    assert 0 <= low <= record["accuracy"] <= high <= 1


def test_aqua_needs_a_protocol_that_scores_letters(tiny_llama: Path, tmp_path: Path) -> None:
    config = EvalConfig(model_name=str(tiny_llama), dataset="aqua", max_eval_samples=2, max_new_tokens=4,
                        output_dir=str(tmp_path), data_dir=str(LLM_ADAPTERS))  # fmt: skip
    with pytest.raises(UserError, match="aqua's answers \\(letter\\) have no official scorer under protocol 'hira'; "
                                        "--protocol llm-adapters scores them"):  # fmt: skip
        evaluate(config)
    config.protocol = "llm-adapters"
    (record,) = evaluate(config)
    assert record["scorer"] == "llm-adapters-letter" and record["eval_config"]["max_new_tokens"] == 4


def test_math_and_dialogue_have_no_log_likelihood_mode(tiny_llama: Path) -> None:
    with pytest.raises(UserError, match="--eval_mode loglik scores answer options; gsm8k, convai2 have none"):
        EvalConfig(model_name=str(tiny_llama), dataset="boolq,gsm8k,convai2", eval_mode="loglik", output_dir=".")


def test_convai2_records_every_metric_with_its_interval(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_convai2(tmp_path / "data", episodes=3)
    missing_model = tmp_path / "no-bert-model"
    config = EvalConfig(model_name=str(tiny_llama), dataset="convai2", max_new_tokens=6, beam_size=2,
                        output_dir=str(tmp_path / "out"), data_dir=str(data),
                        bert_score_model=str(missing_model))  # fmt: skip
    (record,) = evaluate(config)
    assert (record["task"], record["scorer"], record["total"], record["dialogues"]) == ("dialogue", "dialogue", 9, 3)
    assert "accuracy" not in record
    for metric in DIALOGUE_METRICS:
        assert metric in record, metric
        if metric.startswith("bert_"):  # its model is missing: not computed, with the reason, never 0
            assert record[metric] is None and str(missing_model) in record["not_computed"][metric]
            assert metric not in record["metrics"]
        elif record[metric] is not None:
            low, high = record[f"{metric}_ci"]
            assert low <= record[metric] <= high and 0 <= low and high <= 1
    assert record["eval_config"]["max_new_tokens"] == 6
    assert record["protocol_settings"]["generation"] == {"length_penalty": 0.9, "no_repeat_ngram_size": 4}
    predictions = json.loads((tmp_path / "out" / "predictions_convai2.json").read_text())
    assert len(predictions) == 9 and all("generated" in p and "predicted" in p and "f1" in p for p in predictions)
    assert predictions[0]["prompt"].startswith("CONTEXT: your persona: ")


def test_a_dialogue_result_is_redone_when_bertscore_settings_change(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_convai2(tmp_path / "data", episodes=2)
    settings = {"model_name": str(tiny_llama), "dataset": "convai2", "max_new_tokens": 3, "beam_size": 1,
                "output_dir": str(tmp_path / "out"), "data_dir": str(data)}  # fmt: skip
    (first,) = evaluate(EvalConfig(bert_score_model="none", **settings))
    (again,) = evaluate(EvalConfig(bert_score_model="none", **settings))
    assert again["environment"]["time"] == first["environment"]["time"]  # the same settings: not redone
    (other,) = evaluate(EvalConfig(bert_score_model=str(tmp_path / "bert"), bert_score_layers=2, **settings))
    assert other["eval_config"]["bert_score_model"] == str(tmp_path / "bert")  # redone: BERTScore may be computed now
    assert "bert_f1" in other["not_computed"] and first["not_computed"]["bert_f1"] != other["not_computed"]["bert_f1"]
