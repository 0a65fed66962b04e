"""Tables, confidence intervals, paired tests and plots, read only from evaluation result files.

Writes to the output folder: accuracy.csv and accuracy.md (method x dataset + average), stats.json
(per cell: accuracy, 95% bootstrap CI, n; paired McNemar tests against LoRA), accuracy.png, loss_curves.png
and report.md, which embeds them.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peftbench.config import METHODS, ZERO_SHOT
from peftbench.data.registry import benchmark_names
from peftbench.errors import UserError
from peftbench.plots import accuracy_bars, loss_curves
from peftbench.runs import read_records
from peftbench.stats import PairedTest, average_ci, bootstrap_ci, mcnemar

METHOD_ORDER = (ZERO_SHOT, *METHODS)
REFERENCE_METHOD = "lora"  # paired tests compare every method with it


def collect_results(folders: list[Path], mode: str = "generate") -> list[dict[str, Any]]:
    """Every output_*_eval.jsonl record of the given evaluation mode below the given folders."""
    records = []
    for folder in folders:
        if not folder.exists():
            raise UserError(f"results folder {folder} does not exist")
        for path in sorted(folder.rglob("output_*_eval.jsonl")):
            lines = read_records(path)
            record = lines[-1] if lines else {}
            if record.get("mode", "generate") == mode:
                records.append({**record, "result_file": str(path)})
    return records


@dataclass
class Cell:
    accuracy: float
    ci_low: float
    ci_high: float
    outcomes: dict[int, bool]  # example index -> correct

    @property
    def n(self) -> int:
        return len(self.outcomes)


def _outcomes(record: dict[str, Any]) -> dict[int, bool]:
    result_file = Path(record["result_file"])
    name = record.get("predictions_file") or f"predictions_{record['dataset']}.json"
    path = result_file.parent / name
    if not path.is_file():
        raise UserError(f"{result_file} has no predictions file {path.name} beside it")
    return {p["index"]: bool(p["correct"]) for p in json.loads(path.read_text(encoding="utf-8"))}


@dataclass
class AccuracyTable:
    methods: list[str]
    datasets: list[str]
    cells: dict[tuple[str, str], Cell]
    records: dict[tuple[str, str], dict[str, Any]]

    def average(self, method: str) -> Cell | None:
        present = [self.cells[(method, d)] for d in self.datasets if (method, d) in self.cells]
        if not present:
            return None
        low, high = average_ci([list(c.outcomes.values()) for c in present])
        return Cell(sum(c.accuracy for c in present) / len(present), low, high, {})

    def rows(self) -> list[list[str]]:
        """Header + one row per method, accuracies in percent; '-' where a method lacks a dataset."""
        header = ["method", *self.datasets, "avg", "n_datasets"]
        body = []
        for method in self.methods:
            cells = [self.cells.get((method, d)) for d in self.datasets]
            average = self.average(method)
            count = str(sum(c is not None for c in cells))
            body.append([method, *(_percent(c) for c in cells), _percent(average), count])
        return [header, *body]

    def rows_with_ci(self) -> list[list[str]]:
        header = ["method", *self.datasets, "avg"]
        body = []
        for method in self.methods:
            cells = [self.cells.get((method, d)) for d in self.datasets] + [self.average(method)]
            body.append([method, *(_with_ci(c) for c in cells)])
        return [header, *body]

    def paired_tests(self) -> dict[tuple[str, str], PairedTest]:
        """Each method against LoRA, per dataset, on the examples both were scored on."""
        tests = {}
        for method in self.methods:
            for dataset in self.datasets:
                ours, reference = self.cells.get((method, dataset)), self.cells.get((REFERENCE_METHOD, dataset))
                if method != REFERENCE_METHOD and ours and reference:
                    tests[(method, dataset)] = mcnemar(ours.outcomes, reference.outcomes)
        return tests

    def loss_histories(self) -> dict[str, list[dict[str, Any]]]:
        """The Trainer's log history (trainer_state.json) of the run each method's results came from."""
        histories = {}
        for (method, _), record in sorted(self.records.items()):
            if record.get("ckpt") and method not in histories:
                state = Path(record["ckpt"]).parent / "trainer_state.json"
                if state.is_file():
                    histories[method] = json.loads(state.read_text(encoding="utf-8"))["log_history"]
        return histories


def _percent(cell: Cell | None) -> str:
    return "-" if cell is None else f"{100 * cell.accuracy:.2f}"


def _with_ci(cell: Cell | None) -> str:
    return "-" if cell is None else format_with_ci(cell.accuracy, cell.ci_low, cell.ci_high)


def format_with_ci(accuracy: float, low: float, high: float) -> str:
    """Accuracy and its interval in percent: '58.5 [52.0, 65.0]'."""
    return f"{100 * accuracy:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def accuracy_table(records: list[dict[str, Any]]) -> AccuracyTable:
    """One cell per (method, dataset); where a pair was evaluated more than once, the newest result counts."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        key = (record["peft_type"], record["dataset"])
        when = record.get("environment", {}).get("time", "")
        if key not in newest or when >= newest[key].get("environment", {}).get("time", ""):
            newest[key] = record
    if not newest:
        raise UserError("no evaluation results (output_*_eval.jsonl) found in the given folders")
    methods = sorted({m for m, _ in newest}, key=lambda m: (*METHOD_ORDER, m).index(m))
    order = benchmark_names()
    datasets = sorted({d for _, d in newest}, key=lambda d: order.index(d) if d in order else len(order))
    cells = {}
    for key, record in newest.items():
        outcomes = _outcomes(record)
        low, high = bootstrap_ci(list(outcomes.values()))
        cells[key] = Cell(record["accuracy"], low, high, outcomes)
    return AccuracyTable(methods, datasets, cells, newest)


def to_markdown(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _tests_markdown(tests: dict[tuple[str, str], PairedTest]) -> str:
    if not tests:
        return f"(no paired tests: needs {REFERENCE_METHOD} and another method on the same dataset)\n"
    rows = [["method", "dataset", "n", f"Δ acc vs {REFERENCE_METHOD} (pts)", "only method", "only lora", "p (McNemar)"]]
    for (method, dataset), t in tests.items():
        rows.append([method, dataset, str(t.n), f"{100 * t.difference:+.1f}", str(t.only_first), str(t.only_second),
                     f"{t.p_value:.3g}"])  # fmt: skip
    return to_markdown(rows)


def write_report(table: AccuracyTable, out_dir: Path, mode: str) -> Path:
    """report.md with the table (95% CIs), paired tests and plots; stats.json with the same numbers."""
    columns = [*table.datasets, "avg"]
    stats = {(m, d): (c.accuracy, c.ci_low, c.ci_high) for (m, d), c in table.cells.items()}
    stats.update({(m, "avg"): (a.accuracy, a.ci_low, a.ci_high) for m in table.methods if (a := table.average(m))})
    bars = accuracy_bars(stats, table.methods, columns, out_dir / "accuracy.png")
    curves = loss_curves(table.loss_histories(), out_dir / "loss_curves.png")
    tests = table.paired_tests()
    (out_dir / "stats.json").write_text(
        json.dumps(
            {
                "mode": mode,
                "cells": [
                    {
                        "method": m,
                        "dataset": d,
                        "accuracy": a,
                        "ci95": [lo, hi],
                        "n": table.cells[(m, d)].n if d != "avg" else None,
                    }
                    for (m, d), (a, lo, hi) in stats.items()
                ],
                "paired_tests": [{"method": m, "dataset": d, **asdict(t)} for (m, d), t in tests.items()],
            },  # fmt: skip
            indent=1,
        )
    )
    significant = [key for key, t in tests.items() if t.p_value < 0.05]
    verdict = f"Differences from {REFERENCE_METHOD} significant at p < 0.05: " + (
        ", ".join(f"{m} on {d}" for m, d in significant) if significant else "none; the gaps are within noise."
    )
    report = [
        "# peftbench results",
        f"\nEvaluation mode: `{mode}`. Generated {time.strftime('%Y-%m-%d %H:%M')}. Accuracy in %, with 95% "
        "percentile-bootstrap confidence intervals (2000 resamples; the average resamples each dataset).\n",
        to_markdown(table.rows_with_ci()),
        f"\n## Paired tests against {REFERENCE_METHOD}\n",
        "Exact McNemar tests on the examples both methods were scored on.\n",
        _tests_markdown(tests),
        f"\n{verdict}\n",
        "\n## Plots\n",
        f"![accuracy]({bars.name})\n",
    ]
    if curves is not None:
        report.append(f"\n![loss curves]({curves.name})\n")
    path = out_dir / "report.md"
    path.write_text("\n".join(report), encoding="utf-8")
    return path


def analyze(folders: list[Path], out_dir: Path, mode: str = "generate") -> str:
    """Write the tables, statistics, plots and report to out_dir; return the Markdown accuracy table."""
    table = accuracy_table(collect_results(folders, mode))
    rows = table.rows()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "accuracy.csv").write_text(to_csv(rows), encoding="utf-8")
    markdown = to_markdown(rows)
    (out_dir / "accuracy.md").write_text(markdown, encoding="utf-8")
    write_report(table, out_dir, mode)
    return markdown
