"""The accuracy table of any set of evaluation results: one row per method (and per variant where runs of one
method differ), one column per benchmark, with 95% intervals and paired tests against LoRA. Reads result files;
writes none (``report/`` does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.analyze.stats import PairedTest, mcnemar
from peftbench.config import ZERO_SHOT
from peftbench.data.registry import TASK_ORDER, dataset_names
from peftbench.errors import UserError
from peftbench.evaluate.intervals import average_ci, bootstrap_ci
from peftbench.methods import METHODS
from peftbench.runs.records import find_run_record, read_records

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
    superseded: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # older results not used

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
            body.append([method, *(_percent_with_n(c) for c in cells), _percent(average), count])
        return [header, *body]

    def rows_with_ci(self) -> list[list[str]]:
        header = ["method", *self.datasets, "avg"]
        body = []
        for method in self.methods:
            cells = [self.cells.get((method, d)) for d in self.datasets] + [self.average(method)]
            body.append([method, *(_with_ci(c) for c in cells)])
        return [header, *body]

    def paired_tests(self) -> dict[tuple[str, str], PairedTest]:
        """Each row against the LoRA row, per dataset, on the examples both were scored on. With several LoRA
        rows (different models, learning rates, ...) there is no one reference, and no tests."""
        if REFERENCE_METHOD not in self.methods:
            return {}
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


def _percent_with_n(cell: Cell | None) -> str:
    return "-" if cell is None else f"{100 * cell.accuracy:.2f} (n={cell.n})"


def _with_ci(cell: Cell | None) -> str:
    return "-" if cell is None else format_with_ci(cell.accuracy, cell.ci_low, cell.ci_high)


def format_with_ci(accuracy: float, low: float, high: float) -> str:
    """Accuracy and its interval in percent: '58.5 [52.0, 65.0]'."""
    return f"{100 * accuracy:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


# What can differ between runs of one method, as (label, where it is read from the result or its run's config).
VARIANT_FIELDS = (
    ("model", "model_name"), ("lr", "run:lr"), ("seed", "run:seed"), ("r", "run:r_ab"),
    ("targets", "run:target_modules"), ("train_data", "run:dataset"), ("train_samples", "run:max_train_samples"),
    ("steps", "run:max_steps"), ("epochs", "run:epoch"), ("eval_samples", "eval:max_eval_samples"),
    ("beams", "eval:beam_size"), ("new_tokens", "eval:max_new_tokens"), ("template", "prompt_template"),
)  # fmt: skip


def _run_config(ckpt: str | None) -> dict[str, Any]:
    """The training configuration of the run a checkpoint came from ({} for zero-shot or unknown)."""
    if not ckpt:
        return {}
    try:
        lines = read_records(find_run_record(Path(ckpt)))
    except (UserError, OSError):
        return {}
    return lines[0].get("config", {}) if lines else {}


def _variant(record: dict[str, Any], run: dict[str, Any]) -> tuple[str, ...]:
    """The record's value of each VARIANT_FIELDS entry, as text."""
    sources = {"run": run, "eval": record.get("eval_config", {})}
    values = []
    for _, where in VARIANT_FIELDS:
        scope, _, key = where.rpartition(":")
        values.append(str(sources[scope].get(key) if scope else record.get(key)))
    return tuple(values)


def _row_labels(records: list[dict[str, Any]]) -> list[str]:
    """Each record's row: its method, plus whatever differs between that method's runs ('lora (lr=0.001)')."""
    runs = {ckpt: _run_config(ckpt) for ckpt in {r.get("ckpt") for r in records}}  # each run record read once
    variants = [_variant(r, runs[r.get("ckpt")]) for r in records]
    by_method: dict[str, list[tuple[str, ...]]] = {}
    for record, variant in zip(records, variants, strict=True):
        by_method.setdefault(record["peft_type"], []).append(variant)
    differing = {
        method: [i for i in range(len(VARIANT_FIELDS)) if len({v[i] for v in found}) > 1]
        for method, found in by_method.items()
    }
    labels = []
    for record, variant in zip(records, variants, strict=True):
        method = record["peft_type"]
        suffix = ", ".join(f"{VARIANT_FIELDS[i][0]}={variant[i]}" for i in differing[method])
        labels.append(f"{method} ({suffix})" if suffix else method)
    return labels


def _timestamp(record: dict[str, Any]) -> str:
    return record.get("environment", {}).get("time", "")


def task_of(record: dict[str, Any]) -> str:
    """A result's task (results written before tasks existed are commonsense)."""
    return record.get("task", "commonsense")


def by_task(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The results of each task, tasks in the registry's order: each gets a table of its own, never one average."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(task_of(record), []).append(record)
    return dict(sorted(grouped.items(), key=lambda item: TASK_ORDER.index(item[0]) if item[0] in TASK_ORDER else 99))


def newest_results(
    records: list[dict[str, Any]],
) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], list[str]]]:
    """(row, dataset) -> its newest result, and the older ones not used. A row is a method plus whatever differs
    between its runs (model, learning rate, seed, sample size, ...), never a mix of them; results that differ only
    by when they ran are one cell, and the newest counts."""
    if not records:
        raise UserError("no evaluation results (output_*_eval.jsonl) found in the given folders")
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for label, record in zip(_row_labels(records), records, strict=True):
        grouped.setdefault((label, record["dataset"]), []).append({**record, "row": label})
    newest, superseded = {}, {}
    for key, group in grouped.items():
        group.sort(key=_timestamp)
        newest[key] = group[-1]
        if len(group) > 1:
            superseded[key] = [r["result_file"] for r in group[:-1]]
    return newest, superseded


def ordered_rows(keys: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(rows, datasets) of (row, dataset) keys: methods in the registry's order, datasets in the registry's."""
    keys = list(keys)
    methods = sorted({m for m, _ in keys}, key=lambda m: (_method_rank(m), m))
    order = dataset_names()
    datasets = sorted({d for _, d in keys}, key=lambda d: order.index(d) if d in order else len(order))
    return methods, datasets


def accuracy_table(records: list[dict[str, Any]]) -> AccuracyTable:
    """One row per method and per setting that differs between its runs, one column per dataset; the results of
    one task that scores accuracy (commonsense, math), so that the average is over that task alone."""
    if len(tasks := {task_of(r) for r in records}) > 1:
        raise UserError(f"one accuracy table holds one task's results, got {', '.join(sorted(tasks))}")
    newest, superseded = newest_results(records)
    methods, datasets = ordered_rows(newest)
    cells = {}
    for key, record in newest.items():
        outcomes = _outcomes(record)
        low, high = bootstrap_ci(list(outcomes.values()))
        cells[key] = Cell(record["accuracy"], low, high, outcomes)
    return AccuracyTable(methods, datasets, cells, newest, superseded)


def _method_rank(label: str) -> int:
    method = label.split(" (", 1)[0]
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


SIGNIFICANCE = 0.05  # family-wise, after Holm's correction over all of a report's tests
