"""The interactive results page: one HTML file that opens from disk with no network (data, Plotly and the page's
script inlined), written by ``peftbench analyze`` (``report.html``) and ``peftbench reproduce`` (beside the page).

It shows the method × benchmark table with 95% intervals, ``n`` and the paired test against the reference method
after Holm's correction (sortable, with the average); the frontier of average accuracy against trainable
parameters, peak memory or training time; per-benchmark bars with intervals and, with several seeds, each seed;
filters by model, protocol and evaluation mode where the page holds several; and the published rows of the same
model, method and rank beside ours.

Plotly, because plotly.py carries plotly.js itself (``plotly.offline.get_plotlyjs``), so the page needs nothing from
a CDN; Vega-Altair's standalone HTML loads Vega from one unless vl-convert inlines it.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path
from typing import Any

from scipy import stats as scipy_stats

from peftbench.analyze.metrics import MetricTable
from peftbench.analyze.stats import holm
from peftbench.analyze.table import REFERENCE_METHOD, AccuracyTable, Cell, task_of
from peftbench.errors import UserError
from peftbench.evaluate.dialogue_metrics import TABLE2_AVERAGE, TABLE2_METRICS
from peftbench.published import PublishedRow, matching_rows, published_rows
from peftbench.runs.records import find_run_record, read_records

SCRIPT = Path(__file__).with_name("html.js")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; vertical-align: top; }
th.sortable { cursor: pointer; background: #f3f3f3; }
tbody th { text-align: left; }
.ci, .n, .p { color: #666; font-size: 0.8em; display: block; }
.significant { background: #fff3cd; }
.filters label { margin-right: 1rem; }
.note { color: #555; max-width: 60rem; }
"""


def write_page(page: dict[str, Any], path: Path) -> Path:
    """The self-contained HTML file of a page's data (``page_from_table``, ``page_from_summary``)."""
    from plotly.offline import get_plotlyjs

    for row in (*page["rows"], *page["published"]):  # rounded as the Markdown pages round (half to even)
        shown = ("accuracy", "low", "high", "ours")
        row["shown"] = {key: f"{100 * row[key]:.1f}" for key in shown if row.get(key) is not None}

    data = json.dumps(page).replace("<", "\\u003c")  # no "</script>" or "<!--" inside the script
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(page["title"])}</title>
<style>{STYLE}</style>
<script>{get_plotlyjs()}</script>
<script>const PAGE = {data};</script>
<script>{SCRIPT.read_text(encoding="utf-8")}</script>
</head><body>
<h1>{html.escape(page["title"])}</h1>
<p class="note">{html.escape(page["note"])}</p>
<div class="filters">
<label>model <select id="model"></select></label>
<label>protocol <select id="protocol"></select></label>
<label>evaluation <select id="mode"></select></label>
</div>
<h2>{html.escape(page.get("measure", "Accuracy"))} (%), 95% interval, n, and the paired test against
{html.escape(page["reference"])}</h2>
<p class="note">Click a column to sort. Highlighted: different from {html.escape(page["reference"])} at
p &lt; 0.05 after Holm's correction over every method and benchmark. {html.escape(page["interval"])}</p>
<table id="accuracy"></table>
<h2>Frontier: average accuracy against <select id="axis"></select></h2>
<div id="frontier"></div><p class="note" id="frontier-note"></p>
<h2>Per benchmark</h2>
<div id="bars"></div>
<section id="published-section"><h2>Published results beside ours</h2>
<p class="note">Rows of the same model, method and rank from the published tables (peftbench published), with
their sources; generation accuracy, as the papers report.</p>
<table id="published"></table></section>
</body></html>
"""
    path.write_text(document, encoding="utf-8")
    return path


# ---- from a folder's analysis (peftbench analyze) ---------------------------------------------------------------


def page_from_table(table: AccuracyTable, mode: str, title: str) -> dict[str, Any]:
    tests = table.paired_tests()
    adjusted = dict(zip(tests, holm([t.p_value for t in tests.values()]), strict=True))
    rows, costs, published = [], [], []
    for method in table.methods:
        record = next(r for (m, _), r in table.records.items() if m == method)
        run = _run(record.get("ckpt"))
        model, protocol = record["model_name"], record.get("protocol", "")
        cells = {d: table.cells[(method, d)] for d in table.datasets if (method, d) in table.cells}
        for dataset, cell in [*cells.items(), ("avg", table.average(method))]:
            if cell is not None:
                rows.append(_row(model, protocol, mode, method, dataset, cell, adjusted.get((method, dataset))))
        if run.get("cost"):
            costs.append({"model": model, "protocol": protocol, "method": method, **run["cost"]})
        if mode == "generate":
            matches = matching_rows(model, record["peft_type"], run.get("rank"), task=task_of(record))
            published += _published(model, protocol, method, matches, [r for r in rows if r["method"] == method])
    interval = "Intervals: percentile bootstrap over the questions (2000 resamples)."
    return {"title": title, "note": f"Evaluation mode {mode}.", "reference": REFERENCE_METHOD, "interval": interval,
            "rows": rows, "costs": costs, "published": published}  # fmt: skip


def _row(model: str, protocol: str, mode: str, method: str, dataset: str, cell: Cell, p: float | None) -> dict:
    return {"model": model, "protocol": protocol, "mode": mode, "method": method, "benchmark": dataset,
            "accuracy": cell.accuracy, "low": cell.ci_low, "high": cell.ci_high,
            "n": cell.n if dataset != "avg" else None, "p_holm": p, "seeds": [cell.accuracy], "std": 0.0}  # fmt: skip


def _run(ckpt: str | None) -> dict[str, Any]:
    """The training run's cost and rank, from its output.jsonl ({} for zero-shot)."""
    if not ckpt:
        return {}
    try:  # results moved without their run, or a record of an older version: the page shows no cost
        records = read_records(find_run_record(Path(ckpt)))
        end = [r for r in records if r.get("event") == "train_end"][-1]
        memory = end.get("peak_gpu_mem_gb", end.get("peak_rss_gb"))
        cost = {"trainable_params": end["trainable_params"], "peak_memory_gb": memory,
                "train_time_s": end["train_time_s"]}  # fmt: skip
        return {"cost": cost, "rank": records[0]["config"].get("r_ab")}
    except (UserError, OSError, IndexError, KeyError):
        return {}


def _published(model: str, protocol: str, method: str, matches: list[PublishedRow], ours: list[dict]) -> list[dict]:
    """Each matching published row beside our row of the same benchmark: theirs, ours, and whether theirs lies in
    our 95% interval."""
    entries = []
    by_benchmark = {row["benchmark"]: row for row in ours}
    for match in matches:
        theirs = {**match.scores, "avg": match.average}
        for benchmark in (*match.scores, "avg"):
            row, value = by_benchmark.get(benchmark), theirs[benchmark]
            # Our average: of our columns (commonsense, math), or of Table 2's six metrics (dialogue: avg6).
            averaged = set(TABLE2_METRICS) if match.task == "dialogue" else set(by_benchmark) - {"avg"}
            other_average = benchmark == "avg" and averaged != set(match.scores)
            if row is None or value is None or other_average:
                continue  # an average over other benchmarks (or metrics) than theirs is not theirs
            entries.append({"model": model, "protocol": protocol, "mode": "generate", "method": method,
                            "benchmark": benchmark, "published": value, "label": match.label,
                            "source": f"{match.source.where}. {match.caveat}".strip(), "ours": row["accuracy"],
                            "low": row["low"], "high": row["high"],
                            "inside": row["low"] is not None and row["low"] <= value / 100 <= row["high"]})  # fmt: skip
    return entries


def page_from_metric_table(table: MetricTable, mode: str, title: str) -> dict[str, Any]:
    """The page of a corpus-metric task (dialogue): each metric a column with its interval over test dialogues,
    'avg' the HiRA paper's Table 2 average; no paired tests; the published rows of the same model, method and rank."""
    rows, published = [], []
    for method in table.methods:
        ours = []
        for (row, dataset, metric), cell in table.cells.items():
            if row != method or cell.value is None:
                continue
            record = table.records[(row, dataset)]
            column = "avg" if metric == TABLE2_AVERAGE else table.column_name(dataset, metric)
            ours.append({"model": record["model_name"], "protocol": record.get("protocol", ""), "mode": mode,
                         "method": method, "benchmark": column, "accuracy": cell.value, "low": cell.low,
                         "high": cell.high, "n": record["total"], "p_holm": None, "seeds": [cell.value],
                         "std": 0.0})  # fmt: skip
        rows += ours
        record = next(r for (m, _), r in table.records.items() if m == method)
        run = _run(record.get("ckpt"))
        matches = matching_rows(record["model_name"], record["peft_type"], run.get("rank"), task=table.task)
        published += _published(record["model_name"], record.get("protocol", ""), method, matches, ours)
    interval = "Intervals: percentile bootstrap over whole test dialogues (1000 resamples); Dist: jackknife."
    return {"title": title, "note": f"Evaluation mode {mode}.", "reference": "-", "interval": interval,
            "rows": rows, "costs": [], "published": published, "measure": "Each metric"}  # fmt: skip


# ---- from a study's summary.json (peftbench reproduce) ----------------------------------------------------------


def page_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The page of a study's summary.json; its ``published`` entry (the study file's) names the rows to compare."""
    model, published = summary["model"], summary.get("published")
    protocol = summary["train_settings"].get("protocol") or _first_protocol(summary)
    seeds = summary["seeds"]
    rows, published_entries = [], []
    for evaluation in summary["evaluations"]:
        tests: dict[tuple[str, str], float] = {}  # the largest p over the seeds
        for test in evaluation["paired_tests"]:
            key = (test["method"], test["dataset"])
            tests[key] = max(tests.get(key, 0.0), test["p_holm"])
        for cell in evaluation["cells"]:
            if cell["mean"] is None:
                continue
            low, high = _interval(cell)
            rows.append({"model": model, "protocol": protocol, "mode": evaluation["mode"], "method": cell["method"],
                         "benchmark": cell["dataset"], "accuracy": cell["mean"], "low": low, "high": high,
                         "n": evaluation["n"].get(cell["dataset"]), "p_holm": tests.get((cell["method"],
                         cell["dataset"])), "seeds": cell["per_seed"], "std": cell["std"]})  # fmt: skip
        if evaluation["mode"] == "generate" and published:
            table = published_rows(published["source"], published["model"])
            for method, (name, rank) in published["rows"].items():
                matches = [row for row in table if (row.method, row.rank) == (name, rank)]
                ours = [r for r in rows if r["method"] == method and r["mode"] == "generate"]
                published_entries += _published(model, protocol, method, matches, ours)
    costs = [
        {"model": model, "protocol": protocol, "method": m["method"],
         **{key: _mean(m["runs"], key) for key in ("trainable_params", "peak_memory_gb", "train_time_s")}}
        for m in summary["methods"]
    ]  # fmt: skip
    interval = ("Intervals: percentile bootstrap over the questions." if len(seeds) == 1 else
                f"Accuracy is the mean over {len(seeds)} seeds; intervals: Student's t over the seeds; p: the "
                "largest over the seeds.")  # fmt: skip
    where = f"{summary['date']}, {summary['environment']['device']}"
    note = f"Study {summary['preset']}: {summary['description']}. {where}. Written by {summary['command']}."
    measure = "Each metric" if any(e.get("task") == "dialogue" for e in summary["evaluations"]) else "Accuracy"
    return {"title": f"Study {summary['preset']}", "note": note, "reference": REFERENCE_METHOD, "interval": interval,
            "rows": rows, "costs": costs, "published": published_entries, "measure": measure}  # fmt: skip


def _interval(cell: dict[str, Any]) -> tuple[float, float]:
    """One seed: its bootstrap interval; several: Student's t interval of the mean over the seeds."""
    if len(cell["per_seed"]) == 1:
        return tuple(cell["ci95_per_seed"][0])
    half = scipy_stats.t.ppf(0.975, len(cell["per_seed"]) - 1) * cell["std"] / len(cell["per_seed"]) ** 0.5
    return cell["mean"] - half, cell["mean"] + half


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.fmean(values) if values else None


def _first_protocol(summary: dict[str, Any]) -> str:
    runs = [run for method in summary["methods"] for run in method["runs"]]
    return (runs[0].get("protocol") if runs else None) or ""
