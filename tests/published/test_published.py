"""Published results as data: every row's sources and averages, matching to our runs, the page's data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from peftbench import cli
from peftbench.published import BENCHMARKS, matching_rows, published_rows, same_model, sources
from peftbench.report.html import page_from_summary

SUMMARY = Path(__file__).resolve().parents[2] / "docs" / "results" / "cpu-small" / "summary.json"


COMMONSENSE = {"hira_iclr2025_table1": 15, "dora_commonsense": 16, "llm_adapters_commonsense": 17}  # rows per source


def test_every_published_row_has_its_source_and_an_average_that_is_the_mean_of_its_benchmarks() -> None:
    commonsense = {name for name, (source, _) in sources().items() if source.task == "commonsense"}
    assert commonsense == set(COMMONSENSE)
    assert {name: len(published_rows(name)) for name in commonsense} == COMMONSENSE
    rows = published_rows(task="commonsense")
    assert len(rows) == 15 + 16 + 17 and rows == [row for name in sorted(COMMONSENSE) for row in published_rows(name)]
    for row in rows:
        assert row.average_error() is None, row.label
        assert set(row.scores) == set(BENCHMARKS) and "commit" in row.source.where
        assert row.source.columns == BENCHMARKS and row.task == "commonsense" and row.average is not None
    hira = sources()["hira_iclr2025_table1"][0]
    assert "f75f0cfe73e6729f9e1aa5402c5ca5ae36a8c0e8" in hira.where and "page 7" in hira.where
    assert any("copied from the DoRA paper" in caveat for caveat in hira.caveats)
    broken = dataclasses.replace(rows[0], average=rows[0].average + 0.5)
    assert broken.average_error() == pytest.approx(abs(broken.average - sum(broken.scores.values()) / 8))


def test_our_model_names_match_the_papers_and_rows_match_by_method_and_rank() -> None:
    assert same_model("Llama-2-7B", "meta-llama/Llama-2-7b-hf") and same_model("LLaMA2-7B", "/models/Llama-2-7b-hf")
    assert same_model("Llama-3-8B", "meta-llama/Meta-Llama-3-8B") and not same_model("Llama-3-8B", "Llama-2-7B")
    lora = matching_rows("meta-llama/Llama-2-7b-hf", "lora", 32)
    assert sorted(row.source.name for row in lora) == ["dora_commonsense", "hira_iclr2025_table1"]
    assert [row.rank for row in matching_rows("meta-llama/Meta-Llama-3-8B", "hira", 16)] == [16]
    assert matching_rows("meta-llama/Llama-2-7b-hf", "lora", 8) == []
    assert matching_rows("meta-llama/Llama-2-7b-hf", "lora", 32) == matching_rows(
        "Llama-2-7B", "lora", 32, "commonsense"
    )
    # MoRA and P-Tuning: Table 1's rows, as the study files name them (peftbench/studies/hira-*.yaml)
    (mora,) = matching_rows("meta-llama/Meta-Llama-3-8B", "mora", 32)
    assert (mora.source.name, mora.method, mora.average) == ("hira_iclr2025_table1", "MoRA", 78.63)
    (ptuning,) = matching_rows("meta-llama/Llama-2-7b-hf", "ptuning", None)
    assert (ptuning.source.name, ptuning.method, ptuning.average) == ("hira_iclr2025_table1", "P-Tuning", 12.24)


def test_published_lists_the_rows_with_their_sources(capsys) -> None:
    assert cli.main(["published", "--model", "meta-llama/Meta-Llama-3-8B", "--source", "hira_iclr2025_table1"]) == 0
    out = capsys.readouterr().out
    assert out.count("| Llama-3-8B |") == 7 and "| 86.72 |" in out and "not a single run" in out
    assert cli.main(["published", "--model", "gpt-neo-1.3B"]) == 2


def test_the_page_data_holds_every_cell_of_the_summary_and_the_published_rows_beside_ours() -> None:
    summary = json.loads(SUMMARY.read_text())
    summary["published"] = {"source": "hira_iclr2025_table1", "model": "Llama-2-7B", "rows": {"lora": ["LoRA", 32]}}
    page = page_from_summary(summary)
    for evaluation in summary["evaluations"]:
        for cell in evaluation["cells"]:
            (row,) = [r for r in page["rows"] if (r["mode"], r["method"], r["benchmark"]) ==
                      (evaluation["mode"], cell["method"], cell["dataset"])]  # fmt: skip
            assert (row["accuracy"], [row["low"], row["high"]]) == (cell["mean"], cell["ci95_per_seed"][0])
    assert {c["method"] for c in page["costs"]} == {"hira", "lora", "fft", "ia3"}
    generate = next(e for e in summary["evaluations"] if e["mode"] == "generate")
    ours = {c["dataset"]: c for c in generate["cells"] if c["method"] == "lora"}
    entries = page["published"]
    assert [e["benchmark"] for e in entries] == list(BENCHMARKS)  # not the average: ours includes csqa
    boolq = entries[0]
    assert (boolq["published"], boolq["ours"]) == (69.80, ours["boolq"]["mean"])
    low, high = ours["boolq"]["ci95_per_seed"][0]
    assert boolq["inside"] == (low <= 0.698 <= high) and "Llama-2-7B LoRA r32" in boolq["label"]
