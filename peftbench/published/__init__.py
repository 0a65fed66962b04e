"""Published results as data, each row with its source, so that pages show them beside ours.

One CSV file per source table (``peftbench/published/*.csv``): ``#`` header lines give its title, source
(repository, commit, file, table), setting and caveats, and its task and score columns:

    # task: dialogue
    # columns: bleu,bert_f1,bert_recall,bert_precision,meteor,rouge_l

(a file without them is a commonsense table of the eight benchmarks, ``BENCHMARKS``; the keys are ours, each task's
in ``TASKS``). Each row gives its model, method, rank, its trainable share where the source prints one
(``params_percent``), the source's columns (in %), the average where the source prints one, and a caveat of its own
where there is one (a row copied from another paper, a number that changed between commits). ``peftbench
published`` lists them.
"""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from peftbench.errors import UserError

FOLDER = Path(__file__).parent
BENCHMARKS = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "obqa")
# A task -> the score columns its sources may have (our names; all in %): commonsense accuracy per benchmark,
# dialogue BLEU, BERTScore F1, recall and precision, METEOR and ROUGE-L, math GSM8K accuracy.
TASKS: dict[str, tuple[str, ...]] = {
    "commonsense": BENCHMARKS,
    "dialogue": ("bleu", "bert_f1", "bert_recall", "bert_precision", "meteor", "rouge_l"),
    "math": ("gsm8k",),
}
DEFAULT_TASK = "commonsense"  # of a file without a ``# task:`` line
# Our method names -> a published table's (LLM-Adapters calls prefix tuning "Prefix").
PUBLISHED_NAMES = {"lora": "LoRA", "dora": "DoRA", "hira": "HiRA", "prompt": "Prompt Tuning", "prefix": "Prefix",
                   "mora": "MoRA", "ptuning": "P-Tuning"}  # fmt: skip


@dataclass(frozen=True)
class Source:
    name: str  # the file's stem
    title: str
    where: str  # repository, commit, file, table
    setting: str
    caveats: tuple[str, ...]
    task: str = DEFAULT_TASK  # a key of TASKS
    columns: tuple[str, ...] = BENCHMARKS  # its score columns, in its order


@dataclass(frozen=True)
class PublishedRow:
    source: Source
    model: str
    method: str
    rank: int | None
    scores: dict[str, float]  # the source's columns -> score in % (commonsense: benchmark -> accuracy)
    average: float | None  # as the source prints it; None where it prints none
    decimals: int  # of the printed numbers
    caveat: str
    params_percent: str | None = None  # the trainable share in % as printed; None where none is

    @property
    def task(self) -> str:
        return self.source.task

    @property
    def label(self) -> str:
        return f"{_name(self)} ({self.source.title})"

    def average_error(self) -> float | None:
        """How far the printed average is from the mean of the printed scores beyond what rounding allows (None:
        within rounding, or no average printed). The scores and the average each rounded to ``decimals``: at most
        one unit apart."""
        if self.average is None:
            return None
        gap = abs(self.average - statistics.fmean(self.scores.values()))
        return None if gap <= 10**-self.decimals + 1e-9 else gap


@cache
def sources() -> dict[str, tuple[Source, tuple[PublishedRow, ...]]]:
    return {path.stem: _read(path) for path in sorted(FOLDER.glob("*.csv"))}


def published_rows(source: str | None = None, model: str | None = None, task: str | None = None) -> list[PublishedRow]:
    """The rows of one source (None: all), one model (None: all) and one task (None: all), in the files' order."""
    tables = sources()
    if source is not None and source not in tables:
        raise UserError(f"unknown published source {source!r}; there are {', '.join(tables)}")
    if task is not None and task not in TASKS:
        raise UserError(f"unknown published task {task!r}; there are {', '.join(TASKS)}")
    rows = [row for name, (_, table) in tables.items() if source in (None, name) for row in table]
    return [row for row in rows if (model is None or same_model(row.model, model)) and task in (None, row.task)]


def _read(path: Path) -> tuple[Source, tuple[PublishedRow, ...]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = {}
    for line in (line[1:].strip() for line in lines if line.startswith("#")):
        key, _, value = line.partition(":")
        header.setdefault(key.strip(), []).append(value.strip())
    task = header.get("task", [DEFAULT_TASK])[0]
    if task not in TASKS:
        raise ValueError(f"{path.name}: unknown task {task!r}; there are {', '.join(TASKS)}")
    columns = tuple(c.strip() for c in header["columns"][0].split(",")) if "columns" in header else TASKS[task]
    if not columns or set(columns) - set(TASKS[task]) or len(set(columns)) < len(columns):
        raise ValueError(f"{path.name}: columns {', '.join(columns)} are not distinct {task} columns "
                         f"({', '.join(TASKS[task])})")  # fmt: skip
    source = Source(path.stem, header["title"][0], header["source"][0], header["setting"][0],
                    tuple(header.get("caveat", [])), task, columns)  # fmt: skip
    table = csv.DictReader(line for line in lines if not line.startswith("#"))
    if missing := set(columns) - set(table.fieldnames or ()):
        raise ValueError(f"{path.name}: no column {', '.join(sorted(missing))}")
    rows = []
    for row in table:
        average = row.get("average") or None
        printed = [average] if average else [row[column] for column in columns]
        decimals = max(len(number.partition(".")[2]) for number in printed)
        rows.append(PublishedRow(
            source, row["model"], row["method"], int(row["rank"]) if row["rank"] else None,
            {column: float(row[column]) for column in columns}, float(average) if average else None, decimals,
            row.get("caveat") or "", row.get("params_percent") or None,
        ))  # fmt: skip
    return source, tuple(rows)


def _model_key(name: str) -> str:
    """'meta-llama/Llama-2-7b-hf', 'Llama-2-7B' and 'LLaMA2-7B' are one model: 'llama27b'."""
    name = name.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix("-hf").removeprefix("meta-")
    return re.sub(r"[^a-z0-9]", "", name)


def same_model(published: str, ours: str) -> bool:
    return _model_key(published) == _model_key(ours)


def matching_rows(model: str, peft_type: str, rank: int | None, task: str = DEFAULT_TASK) -> list[PublishedRow]:
    """The published rows of this model, method, rank and task (a rank the source does not give matches no rank)."""
    name = PUBLISHED_NAMES.get(peft_type)
    return [row for row in published_rows(model=model, task=task) if row.method == name and row.rank == rank]


def format_rows(rows: list[PublishedRow]) -> str:
    """One Markdown table per source (their columns differ), each row naming its source, then the source's place,
    setting and caveats and its rows' caveats."""
    blocks = []
    for source in dict.fromkeys(row.source for row in rows):
        table = [row for row in rows if row.source == source]
        params = any(row.params_percent is not None for row in table)
        average = any(row.average is not None for row in table)
        header = ["model", "method", "r", *(["params %"] if params else []), *source.columns,
                  *(["avg"] if average else []), "source"]  # fmt: skip
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in table:
            cells = [row.model, row.method, str(row.rank or "")]
            cells += [row.params_percent or ""] if params else []
            cells += [f"{row.scores[column]:.{row.decimals}f}" for column in source.columns]
            cells += [_number(row.average, row.decimals)] if average else []
            lines.append("| " + " | ".join([*cells, source.name]) + " |")
        lines += ["", f"{source.name} ({source.task}): {source.title}. {source.where}.", f"  setting: {source.setting}"]
        lines += [f"  caveat: {caveat}" for caveat in source.caveats]
        lines += [f"  {_name(row)}: {row.caveat}" for row in table if row.caveat]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _number(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _name(row: PublishedRow) -> str:
    return f"{row.model} {row.method}" + (f" r{row.rank}" if row.rank is not None else "")
