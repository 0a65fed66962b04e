"""PNG figures of an analysis and of a study's page (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# (method, dataset) -> (accuracy, ci_low, ci_high), all in [0, 1]
CellStats = dict[tuple[str, str], tuple[float, float, float]]


def accuracy_bars(
    cells: CellStats, methods: list[str], columns: list[str], path: Path, title: str = "Accuracy with 95% bootstrap CI"
) -> Path:
    """Grouped bars: one group per dataset (and the average), one bar per method, whiskers from the cells."""
    inches = min(14.0, max(6.0, 0.25 * len(columns) * max(1, len(methods)) + 2))
    figure, axes = plt.subplots(figsize=(inches, 4.5))
    width = 0.8 / max(1, len(methods))
    positions = np.arange(len(columns))
    for offset, method in enumerate(methods):
        values = [cells.get((method, c), (np.nan, np.nan, np.nan)) for c in columns]
        heights = np.array([100 * v[0] for v in values])
        errors = np.array([[100 * (v[0] - v[1]) for v in values], [100 * (v[2] - v[0]) for v in values]])
        axes.bar(positions + (offset - (len(methods) - 1) / 2) * width, heights, width, yerr=errors, capsize=2,
                 label=method)  # fmt: skip
    axes.set_xticks(positions, columns, rotation=30, ha="right")
    axes.set_ylim(0, 100)
    return _finish(figure, axes, path, title, "accuracy (%)")


def loss_curves(histories: dict[str, list[dict]], path: Path) -> Path | None:
    """Training loss (solid) and validation loss (dashed, markers) per method, from the Trainer's log history."""
    if not histories:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    for method, history in histories.items():
        train = [(e["step"], e["loss"]) for e in history if "loss" in e]
        evaluation = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
        (line,) = axes.plot(*zip(*train, strict=True), label=f"{method} train") if train else (None,)
        if evaluation:
            color = line.get_color() if line is not None else None
            axes.plot(*zip(*evaluation, strict=True), "o--", color=color, label=f"{method} validation")
    axes.set_xlabel("optimizer step")
    return _finish(figure, axes, path, "Training and validation loss", "loss")


def _finish(figure: plt.Figure, axes: plt.Axes, path: Path, title: str, ylabel: str) -> Path:
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
