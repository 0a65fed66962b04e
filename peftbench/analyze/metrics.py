"""The table of a task scored by corpus metrics (ConvAI2: BLEU, METEOR, ROUGE, BERTScore, F1, Dist): one row per
method (and variant, named as the accuracy table names them), one column per metric, each cell the value its
result records with the 95% bootstrap interval over test dialogues recorded beside it. A metric the evaluation
could not compute stays 'not computed' with its reason, never 0. Reads result files; writes none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.analyze.table import REFERENCE_METHOD, newest_results, ordered_rows
from peftbench.errors import UserError
from peftbench.evaluate.dialogue_metrics import paired_bootstrap
from peftbench.evaluate.scoring import score_predictions


@dataclass(frozen=True)
class MetricCell:
    value: float | None  # a fraction, as recorded; None: not computed
    low: float | None
    high: float | None
    reason: str | None = None  # why it was not computed


@dataclass
class MetricTable:
    task: str
    methods: list[str]
    columns: list[tuple[str, str]]  # (dataset, metric)
    cells: dict[tuple[str, str, str], MetricCell]  # (row, dataset, metric)
    records: dict[tuple[str, str], dict[str, Any]]
    superseded: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def column_name(self, dataset: str, metric: str) -> str:
        return metric if len({d for d, _ in self.columns}) == 1 else f"{dataset} {metric}"

    def rows(self) -> list[list[str]]:
        """Header + one row per method: value in % with its interval, 'not computed' where it was not."""
        header = ["method", *(self.column_name(d, m) for d, m in self.columns)]
        body = [[method, *(_shown(self.cells.get((method, d, m))) for d, m in self.columns)] for method in self.methods]
        return [header, *body]

    def paired_tests(self) -> dict[tuple[str, str, str], float]:
        """(row, dataset, metric) -> the paired bootstrap p-value against the LoRA row on the same test replies
        (whole dialogues resampled; Dist by the jackknife). The metrics are rescored from the predictions files:
        BERTScore, whose model the analysis does not load, and the Table 2 average are not tested."""
        if REFERENCE_METHOD not in self.methods:
            return {}
        tests = {}
        for dataset in dict.fromkeys(d for d, _ in self.columns):
            if (REFERENCE_METHOD, dataset) not in self.records:
                continue
            reference, dialogue_ids, replies = _rescored(self.records[(REFERENCE_METHOD, dataset)])
            for method in self.methods:
                if method == REFERENCE_METHOD or (method, dataset) not in self.records:
                    continue
                ours, _, our_replies = _rescored(self.records[(method, dataset)])
                if our_replies != replies:
                    continue  # scored on other replies (another sample): no pairs
                for metric, p in paired_bootstrap(ours, reference, dialogue_ids).items():
                    tests[(method, dataset, metric)] = p
        return tests

    def not_computed(self) -> list[str]:
        """One line per metric that some result could not compute, with the reason it records."""
        reasons = {(d, m, c.reason) for (_, d, m), c in self.cells.items() if c.value is None and c.reason}
        return [f"{self.column_name(d, m)}: {reason}" for d, m, reason in sorted(reasons)]


def _shown(cell: MetricCell | None) -> str:
    if cell is None:
        return "-"
    if cell.value is None:
        return "not computed"
    interval = f" [{100 * cell.low:.2f}, {100 * cell.high:.2f}]" if cell.low is not None else ""
    return f"{100 * cell.value:.2f}{interval}"


def metric_table(records: list[dict[str, Any]]) -> MetricTable:
    """The corpus-metric results of one task, each cell from its newest result (avg6, the Table 2 average, is one
    of the metrics a dialogue result records)."""
    if not records:
        raise UserError("no evaluation results (output_*_eval.jsonl) found in the given folders")
    tasks = {r.get("task") for r in records}
    if len(tasks) != 1 or any("accuracy" in r for r in records):
        raise UserError(f"a metric table holds one corpus-metric task's results, got {', '.join(map(str, tasks))}")
    newest, superseded = newest_results(records)
    methods, datasets = ordered_rows(newest)
    columns: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], MetricCell] = {}
    for (row, dataset), record in newest.items():
        for metric in _metric_keys(record):
            if (dataset, metric) not in columns:
                columns.append((dataset, metric))
            cells[(row, dataset, metric)] = _cell(record, metric)
    columns = [(d, m) for d in datasets for dd, m in columns if dd == d]
    return MetricTable(records[0].get("task", ""), methods, columns, cells, newest, superseded)


def _metric_keys(record: dict[str, Any]) -> list[str]:
    """Every metric a result holds, computed or not, in the order it lists them."""
    return list(dict.fromkeys([*record.get("metrics", []), *record.get("not_computed", {})]))


def _cell(record: dict[str, Any], metric: str) -> MetricCell:
    value = record.get(metric)
    if value is None:
        return MetricCell(None, None, None, record.get("not_computed", {}).get(metric, "not recorded"))
    low, high = record.get(f"{metric}_ci") or (None, None)
    return MetricCell(value, low, high)


def _rescored(record: dict[str, Any]) -> tuple[Any, list[int], list[int]]:
    """The result's predictions scored again without BERTScore, each scored item's dialogue and test example."""
    path = Path(record["result_file"]).parent / record["predictions_file"]
    if not path.is_file():
        raise UserError(f"{record['result_file']} has no predictions file {path.name} beside it")
    predictions = json.loads(path.read_text(encoding="utf-8"))
    scores, dialogue_ids, firsts = score_predictions(predictions, None)
    return scores, dialogue_ids, [predictions[first]["index"] for first in firsts]
