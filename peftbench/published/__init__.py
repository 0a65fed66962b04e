"""Published commonsense results as data, each row with its source, so that pages show them beside ours.

One CSV file per source table (``peftbench/published/*.csv``): ``#`` header lines give its title, source
(repository, commit, file, table), setting and caveats; each row its model, method, rank, the eight benchmarks
(accuracy in %, our benchmark names), the average the source prints, and a caveat of its own where there is one
(a row copied from another paper, a number that changed between commits). ``peftbench published`` lists them.
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
# Our method names -> a published table's (LLM-Adapters calls prefix tuning "Prefix").
PUBLISHED_NAMES = {"lora": "LoRA", "dora": "DoRA", "hira": "HiRA", "prompt": "Prompt Tuning", "prefix": "Prefix"}


@dataclass(frozen=True)
class Source:
    name: str  # the file's stem
    title: str
    where: str  # repository, commit, file, table
    setting: str
    caveats: tuple[str, ...]


@dataclass(frozen=True)
class PublishedRow:
    source: Source
    model: str
    method: str
    rank: int | None
    scores: dict[str, float]  # benchmark -> accuracy in %
    average: float  # as the source prints it
    decimals: int  # of the printed numbers
    caveat: str

    @property
    def label(self) -> str:
        return f"{_name(self)} ({self.source.title})"

    def average_error(self) -> float | None:
        """How far the printed average is from the mean of the printed scores beyond what rounding allows (None:
        within rounding). Eight scores and the average each rounded to ``decimals``: at most one unit apart."""
        gap = abs(self.average - statistics.fmean(self.scores.values()))
        return None if gap <= 10**-self.decimals + 1e-9 else gap


@cache
def sources() -> dict[str, tuple[Source, tuple[PublishedRow, ...]]]:
    return {path.stem: _read(path) for path in sorted(FOLDER.glob("*.csv"))}


def published_rows(source: str | None = None, model: str | None = None) -> list[PublishedRow]:
    tables = sources()
    if source is not None and source not in tables:
        raise UserError(f"unknown published source {source!r}; there are {', '.join(tables)}")
    rows = [row for name, (_, table) in tables.items() if source in (None, name) for row in table]
    return [row for row in rows if model is None or same_model(row.model, model)]


def _read(path: Path) -> tuple[Source, tuple[PublishedRow, ...]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = {}
    for line in (line[1:].strip() for line in lines if line.startswith("#")):
        key, _, value = line.partition(":")
        header.setdefault(key.strip(), []).append(value.strip())
    source = Source(path.stem, header["title"][0], header["source"][0], header["setting"][0],
                    tuple(header.get("caveat", [])))  # fmt: skip
    rows = []
    for row in csv.DictReader(line for line in lines if not line.startswith("#")):
        decimals = len(row["average"].partition(".")[2])
        rows.append(PublishedRow(
            source, row["model"], row["method"], int(row["rank"]) if row["rank"] else None,
            {benchmark: float(row[benchmark]) for benchmark in BENCHMARKS}, float(row["average"]), decimals,
            row.get("caveat", ""),
        ))  # fmt: skip
    return source, tuple(rows)


def _model_key(name: str) -> str:
    """'meta-llama/Llama-2-7b-hf', 'Llama-2-7B' and 'LLaMA2-7B' are one model: 'llama27b'."""
    name = name.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix("-hf").removeprefix("meta-")
    return re.sub(r"[^a-z0-9]", "", name)


def same_model(published: str, ours: str) -> bool:
    return _model_key(published) == _model_key(ours)


def matching_rows(model: str, peft_type: str, rank: int | None) -> list[PublishedRow]:
    """The published rows of this model, method and rank (a rank the source does not give matches no rank)."""
    name = PUBLISHED_NAMES.get(peft_type)
    return [row for row in published_rows(model=model) if row.method == name and row.rank == rank]


def format_rows(rows: list[PublishedRow]) -> str:
    """The rows as a Markdown table, then each source's place and caveats."""
    header = ["model", "method", "r", *BENCHMARKS, "avg", "source"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        scores = [f"{row.scores[b]:.{row.decimals}f}" for b in BENCHMARKS]
        cells = [row.model, row.method, str(row.rank or ""), *scores, f"{row.average:.{row.decimals}f}",
                 row.source.name]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for source in dict.fromkeys(row.source for row in rows):
        lines += ["", f"{source.name}: {source.title}. {source.where}.", f"  setting: {source.setting}"]
        lines += [f"  caveat: {caveat}" for caveat in source.caveats]
        lines += [f"  {_name(row)}: {row.caveat}" for row in rows if row.source == source and row.caveat]
    return "\n".join(lines)


def _name(row: PublishedRow) -> str:
    return f"{row.model} {row.method}" + (f" r{row.rank}" if row.rank is not None else "")
