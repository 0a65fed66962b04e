"""A study's results page: the Markdown page, its plots and its interactive twin, rendered from the study's
summary (``peftbench.studies.summary``) alone.

``write_results`` gathers the summary and writes everything into ``<page folder>/<page name>/`` beside the page;
``rewrite_page`` renders the page again from the committed summary. A test renders the committed summary and
compares it with the committed page.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftbench.analyze.table import REFERENCE_METHOD, SIGNIFICANCE, format_with_ci
from peftbench.config import ZERO_SHOT
from peftbench.data.protocols import DEFAULT_PROTOCOL, get_protocol
from peftbench.data.registry import get_dataset
from peftbench.evaluate.dialogue_metrics import TABLE2_METRICS
from peftbench.methods import get_method
from peftbench.report import html
from peftbench.report.markdown import to_markdown
from peftbench.report.plots import accuracy_bars, loss_curves
from peftbench.studies.plan import Study
from peftbench.studies.summary import SUMMARY_FILE, build_summary, read_summary, write_summary


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def format_cell(cell: dict[str, Any], seeds: int) -> str:
    """One seed: accuracy [95% CI]; several: mean ± std over seeds (percent)."""
    if cell["mean"] is None:
        return "-"
    if seeds == 1 and None in cell["ci95_per_seed"][0]:  # a value without an interval (one test dialogue)
        return _percent(cell["mean"])
    if seeds == 1:
        return format_with_ci(cell["mean"], *cell["ci95_per_seed"][0])
    return f"{_percent(cell['mean'])} ± {_percent(cell['std'])}"


def accuracy_rows(evaluation: dict[str, Any], seeds: int) -> list[list[str]]:
    columns = [*evaluation["datasets"], "avg"]
    cells = {(c["method"], c["dataset"]): c for c in evaluation["cells"]}
    rows = [["method", *columns]]
    rows += [[m, *(format_cell(cells[(m, d)], seeds) for d in columns)] for m in evaluation["methods"]]
    return rows


def _is_dialogue(evaluation: dict[str, Any]) -> bool:
    return evaluation.get("task") == "dialogue"


def _evaluation_title(evaluation: dict[str, Any], protocol: str | None) -> str:
    mode = evaluation["mode"]
    kind = "log-likelihood of each answer option" if mode == "loglik" else "generation"
    settings = evaluation["settings"]
    if mode == "generate":
        decoding = get_protocol(protocol or DEFAULT_PROTOCOL, evaluation.get("task", "commonsense")).eval_defaults
        beams, tokens = (settings.get(key, decoding[key]) for key in ("beam_size", "max_new_tokens"))
        kind += f", beam {beams}, at most {tokens} new tokens"
    samples = "every test example" if evaluation["samples"] is None else f"{evaluation['samples']} examples"
    measure = "Dialogue metrics" if _is_dialogue(evaluation) else "Accuracy"
    return f"{measure}: {kind} ({samples} per dataset, the same for every method)"


def verdict(evaluation: dict[str, Any], seeds: list[int]) -> str:
    """What the paired tests say, in words, counting only tests that survive Holm's correction; then how
    each trained method's average compares with the untrained model."""
    tests = evaluation["paired_tests"]
    if _is_dialogue(evaluation):
        return "Dialogue metrics are compared by their intervals over test dialogues. " + _averages_against_zero_shot(
            evaluation
        )
    if not tests:
        return f"No paired tests: {REFERENCE_METHOD} was not evaluated beside another method."
    family = f"after Holm's correction over the {len(tests) // len(seeds)} tests of each seed"
    several = len(seeds) > 1
    trained = [t for t in tests if t["method"] != ZERO_SHOT]
    sentences = [_trained_verdict(trained, family, several)] if trained else []
    untrained = [t for t in tests if t["method"] == ZERO_SHOT]
    if untrained:
        significant = [t for t in untrained if t["p_holm"] < SIGNIFICANCE]
        sentences.append(
            f"The untrained model differs from {REFERENCE_METHOD} at p < {SIGNIFICANCE} {family} on: "
            + "; ".join(_describe_test(t, several) for t in significant)
            + "."
            if significant
            else f"The untrained model does not differ from {REFERENCE_METHOD} on any dataset at p < {SIGNIFICANCE}."
        )
    sentences.append(_averages_against_zero_shot(evaluation))
    return " ".join(s for s in sentences if s)


def _trained_verdict(tests: list[dict[str, Any]], family: str, several_seeds: bool) -> str:
    significant = [t for t in tests if t["p_holm"] < SIGNIFICANCE]
    if significant:
        listed = "; ".join(_describe_test(t, several_seeds) for t in significant)
        return f"Trained methods that differ from {REFERENCE_METHOD} at p < {SIGNIFICANCE} {family}: {listed}."
    smallest = min(tests, key=lambda t: t["p"])
    return (
        f"No trained method differs from {REFERENCE_METHOD} on any dataset at p < {SIGNIFICANCE} {family} "
        f"(smallest raw p: {smallest['p']:.3g}, {smallest['method']} on {smallest['dataset']}): at this sample "
        "size the differences between methods are within noise."
    )


def _averages_against_zero_shot(evaluation: dict[str, Any]) -> str:
    averages = {c["method"]: c["mean"] for c in evaluation["cells"] if c["dataset"] == "avg"}
    if averages.get(ZERO_SHOT) is None:
        return ""
    gaps = ", ".join(
        f"{m} {100 * (a - averages[ZERO_SHOT]):+.1f}" for m, a in averages.items() if m != ZERO_SHOT and a is not None
    )
    average = "The Table 2 average" if _is_dialogue(evaluation) else "Average accuracy"
    return f"{average} against the untrained model, in points: {gaps}." if gaps else ""


def _describe_test(test: dict[str, Any], several_seeds: bool) -> str:
    where = test["dataset"] if test["method"] == ZERO_SHOT else f"{test['method']} on {test['dataset']}"
    where += f" (seed {test['seed']})" if several_seeds else ""
    return f"{where}: {100 * test['difference']:+.1f} points, p (Holm) = {test['p_holm']:.2g}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _tests_block(evaluation: dict[str, Any], several_seeds: bool) -> list[str]:
    rows = [["method", "dataset", *(["seed"] if several_seeds else []), "n", f"Δ vs {REFERENCE_METHOD} (points)",
             "p", "p (Holm)"]]  # fmt: skip
    for t in evaluation["paired_tests"]:
        seed = [str(t["seed"])] if several_seeds else []
        rows.append([t["method"], t["dataset"], *seed, str(t["n"]), f"{100 * t['difference']:+.1f}", f"{t['p']:.3g}",
                     f"{t['p_holm']:.3g}"])  # fmt: skip
    return [
        f"<details><summary>Paired tests against {REFERENCE_METHOD} ({evaluation['mode']})</summary>\n",
        "Exact McNemar tests on the examples both methods answered; Holm's correction over each seed's tests.\n",
        to_markdown(rows),
        "</details>\n",
    ]


def _cost_rows(summary: dict[str, Any]) -> list[list[str]]:
    evaluations = summary["evaluations"]
    rows = [["method", "lr", "trainable params", "training time", "peak memory", "steps", "final train loss",
             "best validation loss", *(f"eval time ({e['mode']})" for e in evaluations)]]  # fmt: skip
    zero_shot = [_minutes(e["eval_time_s"][ZERO_SHOT]) for e in evaluations if ZERO_SHOT in e["eval_time_s"]]
    if zero_shot:
        rows.append([ZERO_SHOT, "-", "0", "-", "-", "-", "-", "-", *zero_shot])
    for method in summary["methods"]:
        runs = method["runs"]
        first = runs[0]
        share = 100 * first["trainable_params"] / first["total_params"]
        rows.append([
            method["method"], f"{method['lr']:g}", f"{first['trainable_params']:,} ({share:.2f}%)",
            _mean_of(runs, "train_time_s", _minutes), _mean_of(runs, "peak_memory_gb", lambda v: f"{v:.2f} GB"),
            str(first["steps"]), _mean_of(runs, "train_loss", lambda v: f"{v:.3f}"),
            _mean_of(runs, "best_eval_loss", lambda v: f"{v:.3f}"),
            *(_minutes(e["eval_time_s"][method["method"]]) for e in evaluations),
        ])  # fmt: skip
    return rows


def _mean_of(runs: list[dict[str, Any]], key: str, show: Any) -> str:
    values = [r[key] for r in runs if r[key] is not None]
    if not values:
        return "-"
    text = show(statistics.fmean(values))
    return text if len(values) == 1 else f"{text} (mean of {len(values)})"


def _run_revisions(summary: dict[str, Any]) -> list[str]:
    return sorted({str(run["git_revision"]) for method in summary["methods"] for run in method["runs"]})


def base_parameters(summary: dict[str, Any]) -> int:
    """Parameters of the base model: an adapter run's total counts its adapter too."""
    first = summary["methods"][0]
    run, method = first["runs"][0], first.get("peft_type", first["method"])  # summaries before study files: the name
    return run["total_params"] if get_method(method).full_finetune else run["total_params"] - run["trainable_params"]


def study_cost(summary: dict[str, Any]) -> tuple[float, float]:
    """Measured compute seconds of the zero-shot evaluations (run once) and of one seed of training + evaluation."""
    evaluations = summary["evaluations"]
    once = sum(e["eval_time_s"].get(ZERO_SHOT, 0.0) for e in evaluations)
    seeds = len(summary["seeds"])
    per_seed = sum(sum(r["train_time_s"] for r in m["runs"]) for m in summary["methods"]) / seeds
    per_seed += sum(e["eval_time_s"][m["method"]] for e in evaluations for m in summary["methods"])
    return once, per_seed


def render_page(summary: dict[str, Any], assets: str) -> str:
    """The page in Markdown, from the summary alone; `assets` is the folder (relative to the page) of its files."""
    lines = _introduction(summary, assets)
    protocol = summary["train_settings"].get("protocol")
    for evaluation in summary["evaluations"]:
        lines += _evaluation_section(evaluation, summary["seeds"], assets, protocol)
    lines += _cost_section(summary, assets) + _setup_section(summary) + _environment_section(summary)
    return "\n".join(lines)


def _introduction(summary: dict[str, Any], assets: str) -> list[str]:
    return [
        f"# Reproduction study: `{summary['preset']}`\n",
        f"{summary['description']}.\n",
        f"Written by `{summary['command']}` on {summary['date']} from [`{SUMMARY_FILE}`]({assets}/{SUMMARY_FILE}), "
        "which the command gathered from the runs' records and the per-example predictions; "
        "a test checks that this page and that file agree.\n",
        *(f"> **Note.** {note}\n" for note in summary.get("notes", [])),
        f"The same results as an interactive page (sortable table, frontier plots, filters, published rows): "
        f"[{assets}.html]({assets}.html).\n",
    ]


def _evaluation_section(evaluation: dict[str, Any], seeds: list[int], assets: str, protocol: str | None) -> list[str]:
    several = len(seeds) > 1
    statistic = (f"mean ± standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if several
                 else "with 95% percentile-bootstrap confidence intervals")  # fmt: skip
    if _is_dialogue(evaluation):
        measure = f"Each metric in %, {statistic.replace('intervals', 'intervals over test dialogues')}; avg: the HiRA"
        measure += f" paper's Table 2 average of {', '.join(TABLE2_METRICS)}. n: {evaluation['n'].get('bleu')} replies."
    else:
        measure = (
            f"Accuracy in %, {statistic}. n per dataset: "
            + ", ".join(f"{d} {n}" for d, n in evaluation["n"].items())
            + "."
        )
    return [
        f"## {_evaluation_title(evaluation, protocol)}\n",
        measure + "\n",
        to_markdown(accuracy_rows(evaluation, len(seeds))),
        verdict(evaluation, seeds) + "\n",
        *(_tests_block(evaluation, several) if evaluation["paired_tests"] else []),
        f"![accuracy, {evaluation['mode']}]({assets}/accuracy-{evaluation['mode']}.png)\n",
    ]


def _cost_section(summary: dict[str, Any], assets: str) -> list[str]:
    """Training cost and learning rates: what each method took, and the rate it was given."""
    first_run = summary["methods"][0]["runs"][0]
    return [
        "## Training cost\n",
        f"Measured on {summary['environment']['device']}; peak memory is the {first_run['memory_measure']} of the "
        "training process, model included.\n",
        to_markdown(_cost_rows(summary)),
        f"![loss curves]({assets}/loss_curves.png)\n",
        "## Learning rates\n",
        "Every method trains on the same examples with the same budget; only the learning rate is the method's "
        "own, following its paper's guidance.\n",
        to_markdown(
            [["method", "lr", "source"]] + [[m["method"], f"{m['lr']:g}", m["lr_source"]] for m in summary["methods"]]
        ),  # fmt: skip
    ]


def _setup_section(summary: dict[str, Any]) -> list[str]:
    """What every method shared, and what the whole study costs with more seeds."""
    seeds, first_run = summary["seeds"], summary["methods"][0]["runs"][0]
    once, per_seed = study_cost(summary)
    return [
        "## Setup\n",
        f"- Model: `{summary['model']}` ({base_parameters(summary):,} parameters, {first_run['precision']}).",
        f"- Training data: a seeded sample of `{summary['dataset']}` ({_local_mix(summary)}data hash "
        f"`{first_run['data_sha256']}`): {first_run['train_examples']} training and "
        f"{first_run['validation_examples']} validation examples; the checkpoint evaluated: "
        f"{first_run.get('checkpoint_selection') or 'best validation loss'}.",
        f"- Protocol: {_protocol_line(first_run.get('protocol'))}",
        "- Shared budget: " + ", ".join(f"`{k}={v}`" for k, v in summary["train_settings"].items()) + ".",
        "- Evaluation: the same seeded test sample for every method; zero-shot is the untrained model.",
        f"- Seeds: {', '.join(map(str, seeds))} (each seed draws its own training sample, initialisation and "
        "order; the test sample is fixed).\n",
        "## Cost and seeds\n",
        f"Measured compute: {_minutes(once)} for the zero-shot evaluations, which run once, and "
        f"{_minutes(per_seed)} per seed for training and evaluating the {len(summary['methods'])} methods; "
        f"the whole study ran for {_minutes(summary['wall_time_s'])} of wall time, model loading included. "
        f"`--seeds 3` therefore needs about {_minutes(once + 3 * per_seed)} of compute and `--seeds 5` "
        f"(the HiRA paper's count) about {_minutes(once + 5 * per_seed)}.\n",
    ]


def _environment_section(summary: dict[str, Any]) -> list[str]:
    environment = summary["environment"]
    return [
        "## Environment\n",
        f"- peftbench {environment['peftbench']}; page written at git revision `{environment['git_revision']}`; "
        "runs trained at " + ", ".join(f"`{r}`" for r in _run_revisions(summary)),
        f"- torch {environment['torch']}, transformers {environment['transformers']}, peft {environment['peft']}",
        f"- {environment['device']}\n",
    ]


def _local_mix(summary: dict[str, Any]) -> str:
    """The commonsense studies on a CPU train on the local files' mix (the data folder has no Commonsense-170K)."""
    return "the local commonsense mix, " if get_dataset(summary["dataset"]).task == "commonsense" else ""


def _protocol_line(protocol: str | None) -> str:
    if protocol is None:
        return "not recorded: these runs predate protocols (peftbench's earlier template, EOS, seeded validation)."
    return f"`{protocol}` (prompt, truncation, validation split and defaults; README, 'Protocols')."


def draw_plots(summary: dict[str, Any], folder: Path) -> None:
    several = len(summary["seeds"]) > 1
    for evaluation in summary["evaluations"]:
        stats = {}
        for cell in evaluation["cells"]:
            if cell["mean"] is None:
                continue
            mean = cell["mean"]
            low, high = (mean - cell["std"], mean + cell["std"]) if several else cell["ci95_per_seed"][0]
            low, high = (mean, mean) if low is None else (low, high)  # no interval: no whisker
            stats[(cell["method"], cell["dataset"])] = (mean, low, high)
        whiskers = "± std over seeds" if several else "95% bootstrap CI"
        accuracy_bars(stats, evaluation["methods"], [*evaluation["datasets"], "avg"],
                      folder / f"accuracy-{evaluation['mode']}.png",
                      f"{summary['preset']}: accuracy ({evaluation['mode']}), {whiskers}")  # fmt: skip
    histories = {m["method"]: m["runs"][0]["loss_history"] for m in summary["methods"]}
    loss_curves(histories, folder / "loss_curves.png")


def write_results(study: Study, page: Path, command: str, wall_time_s: float, notes: Sequence[str] = ()) -> Path:
    """summary.json, the plots and the page; returns the page's path."""
    summary = build_summary(study, command, wall_time_s, notes)
    write_summary(summary, page.with_suffix(""))
    return write_page(summary, page)


def write_page(summary: dict[str, Any], page: Path) -> Path:
    """The plots, the page and its interactive twin from a summary (also after a change of layout: --render_only)."""
    assets = page.with_suffix("")
    draw_plots(summary, assets)
    page.write_text(render_page(summary, assets.name), encoding="utf-8")
    html.write_page(html.page_from_summary(summary), page.with_suffix(".html"))
    return page


def rewrite_page(page: Path, notes: Sequence[str] = ()) -> Path:
    """Render the page again from the summary.json beside it, without running anything; ``notes``, when given,
    replace the summary's."""
    summary = read_summary(page.with_suffix(""))
    if notes:
        summary["notes"] = list(notes)
        write_summary(summary, page.with_suffix(""))
    return write_page(summary, page)
