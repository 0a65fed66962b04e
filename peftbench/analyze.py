"""Accuracy table across methods and benchmarks, read only from evaluation result files."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.config import METHODS
from peftbench.data.registry import benchmark_names
from peftbench.errors import UserError

METHOD_ORDER = ("zero-shot", *METHODS)


def collect_results(folders: list[Path]) -> list[dict[str, Any]]:
    """Every output_{dataset}_eval.jsonl record below the given folders."""
    records = []
    for folder in folders:
        if not folder.exists():
            raise UserError(f"results folder {folder} does not exist")
        for path in sorted(folder.rglob("output_*_eval.jsonl")):
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if lines:
                records.append({**json.loads(lines[-1]), "result_file": str(path)})
    return records


@dataclass
class AccuracyTable:
    methods: list[str]
    datasets: list[str]
    cells: dict[tuple[str, str], float]  # (method, dataset) -> accuracy in [0, 1]

    def average(self, method: str) -> float | None:
        values = [self.cells[(method, d)] for d in self.datasets if (method, d) in self.cells]
        return sum(values) / len(values) if values else None

    def rows(self) -> list[list[str]]:
        """Header + one row per method, accuracies in percent; '-' where a method lacks a dataset."""
        header = ["method", *self.datasets, "avg", "n_datasets"]
        body = []
        for method in self.methods:
            cells = [self.cells.get((method, d)) for d in self.datasets]
            average = self.average(method)
            body.append(
                [method, *(_percent(c) for c in cells), _percent(average), str(sum(c is not None for c in cells))]
            )
        return [header, *body]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


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
    methods = sorted({m for m, _ in newest}, key=lambda m: (METHOD_ORDER + (m,)).index(m))
    order = benchmark_names()
    datasets = sorted({d for _, d in newest}, key=lambda d: order.index(d) if d in order else len(order))
    return AccuracyTable(methods, datasets, {key: record["accuracy"] for key, record in newest.items()})


def to_markdown(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def analyze(folders: list[Path], out_dir: Path) -> str:
    """Write accuracy.csv and accuracy.md to out_dir; return the Markdown table."""
    table = accuracy_table(collect_results(folders))
    rows = table.rows()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "accuracy.csv").write_text(to_csv(rows), encoding="utf-8")
    markdown = to_markdown(rows)
    (out_dir / "accuracy.md").write_text(markdown, encoding="utf-8")
    return markdown
