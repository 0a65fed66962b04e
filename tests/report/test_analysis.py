"""The analysis reads only result files; here they are written by hand so every number is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftbench.report.analysis import analyze


def write_result(
    folder: Path,
    method: str,
    dataset: str,
    correct: list[bool],
    mode: str = "generate",
    model: str = "m",
    run_name: str = "run",
    time: str = "2026-11-29T10:00:00",
) -> None:
    run = folder / f"results_{method}" / f"{model}-common_170k-{method}-{run_name}"
    checkpoint = run / "checkpoint-10"
    checkpoint.mkdir(parents=True, exist_ok=True)
    suffix = "" if mode == "generate" else "_loglik"
    predictions = [{"index": i, "correct": c} for i, c in enumerate(correct)]
    (checkpoint / f"predictions_{dataset}{suffix}.json").write_text(json.dumps(predictions))
    record = {"dataset": dataset, "peft_type": method, "mode": mode, "accuracy": sum(correct) / len(correct),
              "ckpt": str(checkpoint), "predictions_file": f"predictions_{dataset}{suffix}.json",
              "model_name": model, "environment": {"time": time}}  # fmt: skip
    (checkpoint / f"output_{dataset}{suffix}_eval.jsonl").write_text(json.dumps(record) + "\n")
    history = [{"step": s, "loss": 2.0 / s} for s in range(1, 11)] + [{"step": 10, "eval_loss": 0.5}]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    write_result(tmp_path, "lora", "boolq", [i % 2 == 0 for i in range(200)])  # 50%
    write_result(tmp_path, "hira", "boolq", [i % 10 != 0 for i in range(200)])  # 90%, clearly better
    write_result(tmp_path, "lora", "piqa", [i % 4 != 0 for i in range(100)])  # 75%
    write_result(tmp_path, "hira", "piqa", [i % 4 != 0 for i in range(100)])  # identical predictions
    write_result(tmp_path, "hira", "piqa", [True] * 100, mode="loglik")  # another mode: not mixed in
    return tmp_path


def test_table_intervals_tests_plots_and_report(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "analysis"
    markdown = analyze([results], out)
    assert (out / "accuracy.csv").read_text().splitlines() == [
        "method,boolq,piqa,avg,n_datasets",
        "hira,90.00 (n=200),75.00 (n=100),82.50,2",
        "lora,50.00 (n=200),75.00 (n=100),62.50,2",
    ]
    assert markdown == (out / "accuracy.md").read_text()

    stats = json.loads((out / "stats.json").read_text())
    cells = {(c["method"], c["dataset"]): c for c in stats["cells"]}
    for cell in cells.values():
        assert cell["ci95"][0] <= cell["accuracy"] <= cell["ci95"][1]
    assert cells[("hira", "boolq")]["n"] == 200 and cells[("lora", "piqa")]["n"] == 100
    tests = {(t["method"], t["dataset"]): t for t in stats["paired_tests"]}
    assert tests[("hira", "boolq")]["p_value"] < 1e-6 and tests[("hira", "boolq")]["difference"] == pytest.approx(0.4)
    assert tests[("hira", "piqa")]["p_value"] == 1.0

    for image in ("accuracy.png", "loss_curves.png"):
        data = (out / image).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    report = (out / "report.md").read_text()
    assert "![accuracy](accuracy.png)" in report and "![loss curves](loss_curves.png)" in report
    assert "| hira | 90.0 [" in report
    assert "significant at p < 0.05 after Holm's correction over the 2 tests: hira on boolq" in report
    assert tests[("hira", "boolq")]["p_holm"] == pytest.approx(2 * tests[("hira", "boolq")]["p_value"])


def test_loglik_results_are_analysed_separately(results: Path, tmp_path: Path) -> None:
    analyze([results], tmp_path / "loglik", mode="loglik")
    assert (tmp_path / "loglik" / "accuracy.csv").read_text().splitlines()[1] == "hira,100.00 (n=100),100.00,1"


def test_runs_that_differ_get_their_own_rows_and_reruns_are_named(tmp_path: Path) -> None:
    write_result(tmp_path, "lora", "boolq", [i % 2 == 0 for i in range(200)], model="model-a")
    write_result(tmp_path, "lora", "boolq", [i % 4 != 0 for i in range(200)], model="model-b")
    write_result(tmp_path, "hira", "boolq", [i % 5 != 0 for i in range(200)], run_name="old", time="2026-11-28")
    write_result(tmp_path, "hira", "boolq", [i % 10 != 0 for i in range(200)], run_name="new", time="2026-11-29")
    out = tmp_path / "analysis"
    analyze([tmp_path], out)
    rows = (out / "accuracy.csv").read_text().splitlines()[1:]
    assert rows == [
        "hira,90.00 (n=200),90.00,1",  # the newer of two runs that differ only by when they ran
        "lora (model=model-a),50.00 (n=200),50.00,1",
        "lora (model=model-b),75.00 (n=200),75.00,1",
    ]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["paired_tests"] == []  # two LoRA rows: no single reference
    (superseded,) = stats["superseded"]
    assert (
        superseded["method"] == "hira" and "hira-old" in superseded["not_used"][0] and "hira-new" in superseded["used"]
    )
    assert "## Superseded results" in (out / "report.md").read_text()
