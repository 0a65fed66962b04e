"""A study's numbers: ``summary.json``, gathered from its run records (output.jsonl, trainer_state.json) and
evaluation results.

The page and plots (``peftbench.studies.page``) are rendered from this summary alone, so a page can be written again
after a change of layout without the runs; the summary is small and is committed with the page.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from peftbench.analyze.metrics import MetricTable, metric_table
from peftbench.analyze.stats import holm
from peftbench.analyze.table import AccuracyTable, accuracy_table, collect_results, task_of
from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.evaluate.dialogue_metrics import TABLE2_AVERAGE
from peftbench.runs.folders import find_finished_run
from peftbench.runs.records import RUN_RECORD, environment_record, read_records
from peftbench.studies.design import EvalPlan, MethodPlan, PublishedRows
from peftbench.studies.plan import Study

SUMMARY_FILE = "summary.json"
MEMORY_MEASURES = {"peak_rss_gb": "peak resident memory (CPU)", "peak_gpu_mem_gb": "GPU max allocated"}


def build_summary(study: Study, command: str, wall_time_s: float, notes: Sequence[str] = ()) -> dict[str, Any]:
    design = study.design
    return {
        "preset": design.name,
        "description": design.summary,
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "environment": {**environment_record(), **_machine()},
        "model": design.model_name,
        "dataset": design.dataset,
        "seeds": list(study.seeds),
        "train_settings": design.train_settings,
        "methods": [_method_summary(study, plan) for plan in study.plans],
        "evaluations": [_evaluation_summary(study, plan) for plan in design.evaluations],
        "wall_time_s": round(wall_time_s, 1),
        "notes": list(notes),  # what the person who ran it knows and the records cannot: --note
        "published": _published(design.published),  # the rows the study file says it reproduces
    }


def _published(rows: PublishedRows | None) -> dict[str, Any] | None:
    if rows is None:
        return None
    return {"source": rows.source, "model": rows.model, "rows": {k: list(v) for k, v in rows.rows.items()}}


def _machine() -> dict[str, Any]:
    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0)}
    return {"device": f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"}


def _method_summary(study: Study, plan: MethodPlan) -> dict[str, Any]:
    return {
        "method": plan.name,
        "peft_type": plan.peft_type,
        "lr": plan.lr,
        "lr_source": plan.lr_source,
        "runs": [_run_summary(study, seed, plan.name) for seed in study.seeds],
    }


def _run_summary(study: Study, seed: int, name: str) -> dict[str, Any]:
    run_dir = find_finished_run(RunConfig(**study.train_settings(seed, name)))
    if run_dir is None:
        raise UserError(f"no finished {name} run for seed {seed} in {study.results_folder(seed, name)}")
    records = read_records(run_dir / RUN_RECORD)
    end = [r for r in records if r.get("event") == "train_end"][-1]
    history = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    memory_key = "peak_gpu_mem_gb" if "peak_gpu_mem_gb" in end else "peak_rss_gb"
    return {
        "seed": seed,
        "run": str(run_dir.relative_to(study.out.resolve())),
        "train_time_s": end["train_time_s"],
        "peak_memory_gb": end[memory_key],
        "memory_measure": MEMORY_MEASURES[memory_key],
        "trainable_params": end["trainable_params"],
        "total_params": end["total_params"],
        "steps": end["global_step"],
        "train_loss": end["train_loss"],
        "best_eval_loss": end["best_eval_loss"],
        "protocol": records[0]["config"].get("protocol"),
        "checkpoint_selection": end.get("checkpoint_selection"),
        "train_examples": records[0]["data"]["train_examples"],
        "validation_examples": records[0]["data"]["validation_examples"],
        "data_sha256": records[0]["data"]["sha256"],
        "precision": records[0]["precision"],
        "git_revision": records[0]["environment"]["git_revision"],  # the code this run was trained with
        # Only the logged losses, for the loss-curve plot.
        "loss_history": [
            {k: e[k] for k in ("step", "loss", "eval_loss") if k in e}
            for e in history
            if "loss" in e or "eval_loss" in e
        ],
    }


def _evaluation_summary(study: Study, plan: EvalPlan) -> dict[str, Any]:
    results = {seed: collect_results(study.method_folders(seed), plan.mode) for seed in study.seeds}
    if not any("accuracy" in record for records in results.values() for record in records):
        return _metric_summary(study, plan, {seed: metric_table(records) for seed, records in results.items()})
    tables = {seed: _named(study, seed, accuracy_table(records)) for seed, records in results.items()}
    first = tables[study.seeds[0]]
    columns = [*first.datasets, "avg"]
    return {
        "mode": plan.mode,
        "task": task_of(next(iter(first.records.values()))),
        "samples": plan.samples,
        "settings": plan.settings,
        "methods": first.methods,
        "datasets": first.datasets,
        "n": {d: first.cells[(first.methods[0], d)].n for d in first.datasets if (first.methods[0], d) in first.cells},
        "cells": [_cell_summary(tables, method, column) for method in first.methods for column in columns],
        "paired_tests": [test for seed, table in tables.items() for test in _paired_tests(seed, table)],
        "eval_time_s": {
            method: round(sum(r["wall_time_s"] for (m, _), r in first.records.items() if m == method), 1)
            for method in first.methods
        },
    }


def _study_names(study: Study, seed: int, records: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """Each row's name as the study names its method. The analysis names rows by method and what differs between
    them ('hira (r=16)', 'hira (r=32)'); the study by its file's names (hira-r16, hira-r32)."""
    folders = {study.results_folder(seed, plan.name).resolve(): plan.name for plan in study.plans}
    names = {}
    for (label, _), record in records.items():
        ckpt = Path(record["ckpt"]).resolve() if record.get("ckpt") else None
        names[label] = next((name for folder, name in folders.items() if ckpt and folder in ckpt.parents), label)
    return names


def _metric_summary(study: Study, plan: EvalPlan, tables: dict[int, MetricTable]) -> dict[str, Any]:
    """A corpus-metric evaluation (dialogue) in the shape of an accuracy one: each metric is a column, and the
    'avg' column is the HiRA paper's Table 2 average of six of them, as its published rows have it."""
    first = tables[study.seeds[0]]
    names = _study_names(study, study.seeds[0], first.records)  # rows are named by the first seed's table
    columns = {(d, m): "avg" if m == TABLE2_AVERAGE else first.column_name(d, m) for d, m in first.columns}
    cells = []
    for method in first.methods:
        for key, column in columns.items():
            found = [t.cells.get((method, *key)) for t in tables.values()]
            present = [c for c in found if c is not None and c.value is not None]
            values = [c.value for c in present]
            reasons = sorted({c.reason for c in found if c is not None and c.reason})
            cells.append({
                "method": names.get(method, method), "dataset": column,
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values,
                "ci95_per_seed": [[c.low, c.high] for c in present], "not_computed": "; ".join(reasons) or None,
            })  # fmt: skip
    return {
        "mode": plan.mode,
        "task": first.task,
        "samples": plan.samples,
        "settings": plan.settings,
        "methods": [names.get(m, m) for m in first.methods],
        "datasets": [c for c in columns.values() if c != "avg"],
        "n": {column: first.records[(first.methods[0], key[0])]["total"] for key, column in columns.items()},
        "cells": cells,
        "paired_tests": [],
        "eval_time_s": {
            names.get(method, method): round(
                sum(r["wall_time_s"] for (m, _), r in first.records.items() if m == method), 1
            )
            for method in first.methods
        },
    }


def _named(study: Study, seed: int, table: AccuracyTable) -> AccuracyTable:
    """The table with each row named as the study names its method."""
    names = _study_names(study, seed, table.records)
    return AccuracyTable(
        [names[m] for m in table.methods],
        table.datasets,
        {(names[m], d): cell for (m, d), cell in table.cells.items()},
        {(names[m], d): record for (m, d), record in table.records.items()},
        {(names[m], d): older for (m, d), older in table.superseded.items()},
    )


def _cell_summary(tables: dict[int, AccuracyTable], method: str, column: str) -> dict[str, Any]:
    cells = [
        table.average(method) if column == "avg" else table.cells.get((method, column)) for table in tables.values()
    ]
    present = [c for c in cells if c is not None]
    accuracies = [c.accuracy for c in present]
    return {
        "method": method,
        "dataset": column,
        "mean": statistics.fmean(accuracies) if accuracies else None,
        "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "per_seed": accuracies,
        "ci95_per_seed": [[c.ci_low, c.ci_high] for c in present],
    }


def _paired_tests(seed: int, table: AccuracyTable) -> list[dict[str, Any]]:
    tests = table.paired_tests()
    adjusted = holm([t.p_value for t in tests.values()])
    return [
        {"seed": seed, "method": m, "dataset": d, "n": t.n, "difference": t.difference, "p": t.p_value, "p_holm": p}
        for ((m, d), t), p in zip(tests.items(), adjusted, strict=True)
    ]


def write_summary(summary: dict[str, Any], folder: Path) -> Path:
    """``folder``/summary.json; the page's plots go beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return path


def read_summary(folder: Path) -> dict[str, Any]:
    """The summary.json a study wrote into ``folder`` (for --render_only, which runs nothing)."""
    path = folder / SUMMARY_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist: run the study first (without --render_only)")
    return json.loads(path.read_text(encoding="utf-8"))
