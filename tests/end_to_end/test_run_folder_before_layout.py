"""A run folder written before the layout change (commit 91ce570, ``tests/fixtures/run_before_layout``) keeps
working: its tokenized-data cache key, its results' identity and its numbers are today's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny import DATA_DIR

from peftbench.config import EvalConfig, RunConfig
from peftbench.data.pipeline import tokenization_key
from peftbench.evaluate.runner import evaluate
from peftbench.models.load import load_tokenizer
from peftbench.report.analysis import analyze
from peftbench.runs.records import read_records

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_before_layout"


@pytest.fixture
def old_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the fixture as the working directory (its records name the model and run by relative paths)."""
    shutil.copytree(FIXTURE, tmp_path / "old")
    monkeypatch.chdir(tmp_path / "old")
    (run,) = Path("results_lora").iterdir()
    return run


def _predictions(checkpoint: Path, name: str) -> tuple[list[tuple], list[float]]:
    """Per question: index, prediction and generated text; and every option's log-prob (log-likelihood mode)."""
    rows = json.loads((checkpoint / name).read_text(encoding="utf-8"))
    logprobs = [value for row in rows for value in row.get("logprobs", [])]
    return [(row["index"], row["predicted"], row.get("generated")) for row in rows], logprobs


def test_its_tokenized_data_keep_their_cache_key(old_run: Path) -> None:
    record = read_records(old_run / "output.jsonl")[0]
    config = RunConfig.from_record(record["config"])
    key = tokenization_key(record["data"]["sha256"], config.data_settings(), load_tokenizer("model"))
    assert key == record["data"]["tokenization_cache"]


def test_its_results_are_recognised_and_not_redone(old_run: Path) -> None:
    checkpoint = old_run / "checkpoint-8"
    before = {path.name: path.read_bytes() for path in checkpoint.glob("output_*_eval.jsonl")}
    config = EvalConfig(ckpt=str(checkpoint), dataset="boolq,piqa", eval_mode="loglik", max_eval_samples=8,
                        data_dir=DATA_DIR)  # fmt: skip
    records = evaluate(config)
    assert [(r["dataset"], r["accuracy"]) for r in records] == [("boolq", 0.375), ("piqa", 0.5)]
    assert {path.name: path.read_bytes() for path in checkpoint.glob("output_*_eval.jsonl")} == before


@pytest.mark.parametrize(("mode", "samples", "suffix"), [("loglik", 8, "_loglik"), ("generate", 4, "")])
def test_its_checkpoint_evaluates_to_the_same_predictions(old_run: Path, mode: str, samples: int, suffix: str) -> None:
    checkpoint = old_run / "checkpoint-8"
    old = {name: _predictions(checkpoint, f"predictions_{name}{suffix}.json") for name in ("boolq", "piqa")}
    config = EvalConfig(ckpt=str(checkpoint), dataset="boolq,piqa", eval_mode=mode, max_eval_samples=samples,
                        data_dir=DATA_DIR, overwrite=True)  # fmt: skip
    evaluate(config)
    for name, (choices, logprobs) in old.items():
        new_choices, new_logprobs = _predictions(checkpoint, f"predictions_{name}{suffix}.json")
        assert new_choices == choices
        assert new_logprobs == pytest.approx(logprobs, abs=1e-4)


def test_it_analyzes_to_the_same_table_and_statistics(old_run: Path, tmp_path: Path) -> None:
    table = analyze([Path("results_lora")], tmp_path / "analysis", mode="loglik")
    assert table == (FIXTURE / "analysis" / "accuracy.md").read_text(encoding="utf-8")
    old, new = (
        json.loads((folder / "stats.json").read_text()) for folder in (FIXTURE / "analysis", tmp_path / "analysis")
    )
    assert new == old
