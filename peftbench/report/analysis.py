"""``peftbench analyze``: the files of an analysis, written from the tables that ``analyze`` builds, one per task.

Writes to the output folder: accuracy.csv and accuracy.md (method x dataset + average), stats.json (per cell:
accuracy, 95% bootstrap CI, n; paired McNemar tests against LoRA), accuracy.png, loss_curves.png, report.md,
which embeds them, and report.html, the interactive page (``report/html.py``). Math results get the same files
with '_math'; dialogue results dialogue.csv and dialogue.md (each metric with its interval over dialogues).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peftbench.analyze.metrics import MetricTable, metric_table
from peftbench.analyze.stats import PairedTest, holm
from peftbench.analyze.table import (
    REFERENCE_METHOD,
    SIGNIFICANCE,
    AccuracyTable,
    accuracy_table,
    by_task,
    collect_results,
)
from peftbench.errors import UserError
from peftbench.evaluate.dialogue_metrics import TABLE2_AVERAGE, TABLE2_METRICS
from peftbench.report.html import page_from_metric_table, page_from_table, write_page
from peftbench.report.markdown import to_csv, to_markdown
from peftbench.report.plots import CellStats, accuracy_bars, loss_curves


def _tests_markdown(tests: dict[tuple[str, str], PairedTest], adjusted: list[float]) -> str:
    if not tests:
        return f"(no paired tests: needs one {REFERENCE_METHOD} row and another method on the same dataset)\n"
    header = ["method", "dataset", "n", f"Δ acc vs {REFERENCE_METHOD} (pts)", "only method", "only lora",
              "p (McNemar)", "p (Holm)"]  # fmt: skip
    rows = [header]
    for ((method, dataset), t), p_holm in zip(tests.items(), adjusted, strict=True):
        rows.append([method, dataset, str(t.n), f"{100 * t.difference:+.1f}", str(t.only_first), str(t.only_second),
                     f"{t.p_value:.3g}", f"{p_holm:.3g}"])  # fmt: skip
    return to_markdown(rows)


def _superseded_markdown(table: AccuracyTable) -> list[str]:
    """Results of runs that differ from the one used only by when they ran."""
    if not table.superseded:
        return []
    lines = ["\n## Superseded results\n", "Runs that differ from the one in the table only by when they ran; "
             "the newest is used.\n"]  # fmt: skip
    for (row, dataset), older in sorted(table.superseded.items()):
        used = table.records[(row, dataset)]["result_file"]
        lines.append(f"- {row} on {dataset}: used `{used}`; not used: " + ", ".join(f"`{f}`" for f in older))
    return lines


def write_report(table: AccuracyTable, out_dir: Path, mode: str, suffix: str = "") -> list[str]:
    """The report's section of an accuracy table (95% CIs, paired tests, plots); stats{suffix}.json with the same
    numbers and accuracy{suffix}.png, loss_curves{suffix}.png beside it."""
    stats = _cell_stats(table)
    bars = accuracy_bars(stats, table.methods, [*table.datasets, "avg"], out_dir / f"accuracy{suffix}.png")
    curves = loss_curves(table.loss_histories(), out_dir / f"loss_curves{suffix}.png")
    tests = table.paired_tests()
    adjusted = holm([t.p_value for t in tests.values()])
    stats_file = out_dir / f"stats{suffix}.json"
    stats_file.write_text(json.dumps(_stats_record(table, mode, stats, tests, adjusted), indent=1))
    section = [
        "\nAccuracy in %, with 95% percentile-bootstrap confidence intervals (2000 resamples; the average "
        "resamples each dataset).\n",
        to_markdown(table.rows_with_ci()),
        f"\n## Paired tests against {REFERENCE_METHOD}\n",
        "Exact McNemar tests on the examples both methods were scored on; p (Holm) adjusts for testing every "
        "method on every dataset.\n",
        _tests_markdown(tests, adjusted),
        f"\n{_verdict(tests, adjusted)}\n",
        *_superseded_markdown(table),
        "\n## Plots\n",
        f"![accuracy]({bars.name})\n",
    ]
    if curves is not None:
        section.append(f"\n![loss curves]({curves.name})\n")
    return section


def _metric_section(table: MetricTable, out_dir: Path) -> tuple[str, list[str]]:
    """(the Markdown table, the report's section) of a corpus-metric task; {task}.csv and .md beside them."""
    rows = table.rows()
    (out_dir / f"{table.task}.csv").write_text(to_csv(rows), encoding="utf-8")
    markdown = to_markdown(rows)
    (out_dir / f"{table.task}.md").write_text(markdown, encoding="utf-8")
    reasons = table.not_computed()
    tests = table.paired_tests()
    adjusted = dict(zip(tests, holm(list(tests.values())), strict=True))
    rows = [["method", "dataset", "metric", "p (paired bootstrap)", "p (Holm)"]]
    rows += [[m, d, metric, f"{p:.3g}", f"{adjusted[(m, d, metric)]:.3g}"] for (m, d, metric), p in tests.items()]
    significant = [f"{m} {metric}" for (m, _, metric), p in adjusted.items() if p < SIGNIFICANCE]
    section = [
        "\nEach metric in %, with its 95% percentile-bootstrap interval over test dialogues (1000 resamples of "
        f"whole dialogues); {TABLE2_AVERAGE}: the mean of the HiRA paper's Table 2 metrics "
        f"({', '.join(TABLE2_METRICS)}), its 'Average'.\n",
        markdown,
        *(["\nNot computed:\n", *(f"- {line}" for line in reasons)] if reasons else []),
        f"\n### Paired tests against {REFERENCE_METHOD}\n",
        "Paired bootstrap over the same test dialogues (1000 resamples; Dist: jackknife), on metrics rescored from "
        "the predictions files (BERTScore and avg6 are not tested); p (Holm) adjusts over every test.\n",
        to_markdown(rows) if tests else f"(none: needs one {REFERENCE_METHOD} row and another on the same replies)",
        f"\nSignificant at p < {SIGNIFICANCE} after Holm's correction: {', '.join(significant) or 'none'}.\n",
    ]
    return markdown, section


def _cell_stats(table: AccuracyTable) -> CellStats:
    """Every cell's accuracy and interval, each method's average included."""
    stats = {(m, d): (c.accuracy, c.ci_low, c.ci_high) for (m, d), c in table.cells.items()}
    stats.update({(m, "avg"): (a.accuracy, a.ci_low, a.ci_high) for m in table.methods if (a := table.average(m))})
    return stats


def _stats_record(
    table: AccuracyTable, mode: str, stats: CellStats, tests: dict[tuple[str, str], PairedTest], adjusted: list[float]
) -> dict[str, Any]:
    """The numbers of report.md for programs: stats.json."""
    return {
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
        "paired_tests": [
            {"method": m, "dataset": d, **asdict(t), "p_holm": p}
            for ((m, d), t), p in zip(tests.items(), adjusted, strict=True)
        ],
        "superseded": [
            {"method": m, "dataset": d, "used": table.records[(m, d)]["result_file"], "not_used": older}
            for (m, d), older in table.superseded.items()
        ],
    }


def _verdict(tests: dict[tuple[str, str], PairedTest], adjusted: list[float]) -> str:
    significant = [key for key, p in zip(tests, adjusted, strict=True) if p < SIGNIFICANCE]
    return (
        f"Differences from {REFERENCE_METHOD} significant at p < {SIGNIFICANCE} after Holm's correction over "
        f"the {len(tests)} tests: "
        + (", ".join(f"{m} on {d}" for m, d in significant) if significant else "none; the gaps are within noise.")
    )


def analyze(folders: list[Path], out_dir: Path, mode: str = "generate") -> str:
    """Write each task's tables, statistics, plots and page and one report to out_dir; return the Markdown tables.

    Each task gets its own table (commonsense: accuracy.csv/.md, stats.json, report.html, as always; math: the
    same names with _math; dialogue: dialogue.csv/.md): an average never mixes tasks or kinds of metric."""
    tasks = by_task(collect_results(folders, mode))
    if not tasks:
        raise UserError("no evaluation results (output_*_eval.jsonl) found in the given folders")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ["# peftbench results", f"\nEvaluation mode: `{mode}`. Generated {time.strftime('%Y-%m-%d %H:%M')}.\n"]
    tables = []
    for task, records in tasks.items():
        suffix = "" if task == "commonsense" else f"_{task}"
        heading = [f"\n## {task.capitalize()}\n"] if len(tasks) > 1 else []
        if any("accuracy" in record for record in records):
            table = accuracy_table(records)
            rows = table.rows()
            (out_dir / f"accuracy{suffix}.csv").write_text(to_csv(rows), encoding="utf-8")
            markdown = to_markdown(rows)
            (out_dir / f"accuracy{suffix}.md").write_text(markdown, encoding="utf-8")
            report += heading + write_report(table, out_dir, mode, suffix)
            page = page_from_table(table, mode, f"peftbench results ({task}, {mode})" if suffix else
                                   f"peftbench results ({mode})")  # fmt: skip
            write_page(page, out_dir / f"report{suffix}.html")
        else:
            metrics = metric_table(records)
            markdown, section = _metric_section(metrics, out_dir)
            report += heading + section
            page = page_from_metric_table(metrics, mode, f"peftbench results ({task}, {mode})")
            write_page(page, out_dir / f"report{suffix}.html")
        tables.append(f"{task}:\n{markdown}" if len(tasks) > 1 else markdown)
    (out_dir / "report.md").write_text("\n".join(report), encoding="utf-8")
    return "\n\n".join(tables)
