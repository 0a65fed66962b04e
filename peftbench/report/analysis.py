"""``peftbench analyze``: the files of an analysis, written from the table that ``analyze`` builds.

Writes to the output folder: accuracy.csv and accuracy.md (method x dataset + average), stats.json (per cell:
accuracy, 95% bootstrap CI, n; paired McNemar tests against LoRA), accuracy.png, loss_curves.png, report.md,
which embeds them, and report.html, the interactive page (``report/html.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peftbench.analyze.stats import PairedTest, holm
from peftbench.analyze.table import REFERENCE_METHOD, SIGNIFICANCE, AccuracyTable, accuracy_table, collect_results
from peftbench.report.html import page_from_table, write_page
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


def write_report(table: AccuracyTable, out_dir: Path, mode: str) -> Path:
    """report.md with the table (95% CIs), paired tests and plots; stats.json with the same numbers."""
    stats = _cell_stats(table)
    bars = accuracy_bars(stats, table.methods, [*table.datasets, "avg"], out_dir / "accuracy.png")
    curves = loss_curves(table.loss_histories(), out_dir / "loss_curves.png")
    tests = table.paired_tests()
    adjusted = holm([t.p_value for t in tests.values()])
    (out_dir / "stats.json").write_text(json.dumps(_stats_record(table, mode, stats, tests, adjusted), indent=1))
    report = [
        "# peftbench results",
        f"\nEvaluation mode: `{mode}`. Generated {time.strftime('%Y-%m-%d %H:%M')}. Accuracy in %, with 95% "
        "percentile-bootstrap confidence intervals (2000 resamples; the average resamples each dataset).\n",
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
        report.append(f"\n![loss curves]({curves.name})\n")
    path = out_dir / "report.md"
    path.write_text("\n".join(report), encoding="utf-8")
    return path


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
    """Write the tables, statistics, plots and report to out_dir; return the Markdown accuracy table."""
    table = accuracy_table(collect_results(folders, mode))
    rows = table.rows()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "accuracy.csv").write_text(to_csv(rows), encoding="utf-8")
    markdown = to_markdown(rows)
    (out_dir / "accuracy.md").write_text(markdown, encoding="utf-8")
    write_report(table, out_dir, mode)
    write_page(page_from_table(table, mode, f"peftbench results ({mode})"), out_dir / "report.html")
    return markdown
