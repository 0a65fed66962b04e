"""Where examples come from, in this order:

1. local files in the LLM-Adapters layout: ``<data_dir>/<folder>/{train,test}.json``;
2. local files of the benchmark's original release (``dev_rand_split.jsonl``, ``hellaswag_val.jsonl``, ...),
   with PIQA/SIQA's separate ``*-labels.lst`` merged in;
3. the Hugging Face hub through ``datasets`` (cached; ``HF_DATASETS_OFFLINE=1`` keeps it offline).

Every example is a dict in the LLM-Adapters format: ``{"instruction", "input", "output", "answer"}``.
A record that would be mislabelled (missing field, empty instruction, answer outside the dataset's
keywords, malformed line) is never used silently: ``on_bad_record="error"`` refuses the file naming
the record, ``"skip"`` drops it and logs a summary with locations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench import hub
from peftbench.data.converters import CONVERTERS, Example
from peftbench.data.registry import DatasetSpec, get_dataset
from peftbench.errors import UserError

logger = logging.getLogger(__name__)
# A test record needs no worked output (six of LLM-Adapters' GSM8K test records have none): only training does.
REQUIRED_FIELDS = {"train": ("instruction", "output", "answer"), "test": ("instruction", "answer")}
BAD_RECORD_MODES = ("skip", "error")


@dataclass
class Loaded:
    """Examples and where they came from (files or a hub dataset), for records and messages."""

    examples: list[Example]
    origins: list[str]
    files: list[Path] = field(default_factory=list)  # local files, for the content hash
    skipped: int = 0
    revisions: dict[str, str] = field(default_factory=dict)  # hub repository -> the commit its examples came from

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.read_bytes())
        if not self.files:  # hub data: hash the converted examples
            digest.update(json.dumps(self.examples, sort_keys=True).encode())
        return digest.hexdigest()[:16]


def data_roots(data_dir: str) -> list[Path]:
    return [Path(part).expanduser() for part in data_dir.split(",") if part.strip()]


def _find(roots: Sequence[Path], spec: DatasetSpec, files: Sequence[str]) -> Path | None:
    for root in roots:
        for folder in (spec.folder, *spec.extra_folders):
            for name in files:
                if (root / folder / name).is_file():
                    return root / folder / name
    return None


def _file_names(spec: DatasetSpec, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(LLM-Adapters files, original release files) of a split kind, 'test' or 'train'."""
    if kind == "test":
        return spec.test_files, spec.official_test_files
    return spec.train_files, spec.official_train_files


def _local_file(roots: Sequence[Path], spec: DatasetSpec, kind: str) -> Path | None:
    """The local file of a split: the LLM-Adapters layout first, then the original release."""
    local, official = _file_names(spec, kind)
    return _find(roots, spec, local) or _find(roots, spec, official)


def _parlai_records(path: Path) -> Iterable[tuple[str, Any]]:
    """One record per reply of ParlAI's ConvAI2 files: numbered lines, 1 at each episode's start; 'your persona:'
    lines, then 'partner turn<TAB>reply<TAB>...' lines (the partner's persona, in other variants, is not used)."""
    persona: list[str] = []
    history: list[str] = []
    episode = -1
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        index, _, text = line.partition(" ")
        if not line.strip():
            continue
        if not index.isdigit():
            yield f"line {number}", ValueError("does not start with a turn number")
            continue
        if index == "1":
            persona, history, episode = [], [], episode + 1
        if text.startswith("your persona:"):
            persona.append(text)
            continue
        if text.startswith("partner's persona:"):
            continue
        fields = text.split("\t")
        if len(fields) < 2:
            yield f"line {number}", ValueError("has no tab-separated reply")
            continue
        partner, reply = fields[0], fields[1]
        record = {"persona": persona, "history": [*history, partner], "reply": reply, "dialogue": episode}
        yield f"line {number}", record
        history += [partner, reply]


def _raw_records(path: Path) -> Iterable[tuple[str, Any]]:
    """(location, record) pairs; a malformed JSONL line is yielded as its error for the bad-record policy."""
    if path.suffix == ".txt":
        yield from _parlai_records(path)
        return
    if path.suffix != ".jsonl":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(records, list):
            raise UserError(f"{path}: expected a JSON array of examples, found {type(records).__name__}")
        yield from ((f"example {i}", record) for i, record in enumerate(records))
        return
    labels_file = path.with_name(f"{path.stem}-labels.lst")
    labels = labels_file.read_text(encoding="utf-8").split() if labels_file.is_file() else None
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"line {number}", ValueError(f"not valid JSON ({exc.msg})")
            continue
        if labels is not None:
            record["label"] = labels[number - 1] if number <= len(labels) else None
        yield f"line {number}", record


def _check(record: Any, spec: DatasetSpec, convert: bool, kind: str) -> Example:
    """The record as a valid example of spec, or ValueError saying what is wrong."""
    if isinstance(record, Exception):
        raise record
    if convert:
        try:
            record = CONVERTERS[spec.schema](record)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not in {spec.schema}'s schema (missing or wrong {exc})") from None
    required = REQUIRED_FIELDS[kind]
    missing = [name for name in required if not isinstance(record.get(name), str) or not record[name].strip()]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    if problem := ANSWER_CHECKS[spec.answer_kind](record["answer"], spec):
        raise ValueError(f"has answer {record['answer']!r}, {problem}")
    return {**record, "input": record.get("input") or ""}


def _number_problem(answer: str, spec: DatasetSpec) -> str | None:
    try:
        value = float(answer.replace(",", ""))
    except ValueError:
        return "not a number"
    if not math.isfinite(value):
        return "not a finite number"
    return "not an integer" if spec.answer_kind == "integer" and value != int(value) else None


# answer_kind -> what is wrong with an answer (None: nothing). A test answer that no scorer can match is a
# mislabelled record: 'text' (a free-form reply or final answer) needs only to be non-empty.
ANSWER_CHECKS: dict[str, Callable[[str, DatasetSpec], str | None]] = {
    "keyword": lambda answer, spec: None if answer in spec.keywords else f"not one of {spec.keywords}",
    "integer": _number_problem,
    "number": _number_problem,
    "letter": lambda answer, spec: None if answer in tuple("ABCDE") else "not a letter A-E",
    "text": lambda answer, spec: None,
}


def _examples(
    records: Iterable[tuple[str, Any]], spec: DatasetSpec, origin: str, convert: bool, on_bad: str, kind: str
) -> Loaded:
    examples: list[Example] = []
    bad: list[str] = []
    for location, record in records:
        try:
            examples.append(_check(record, spec, convert, kind))
        except ValueError as exc:
            bad.append(f"{location}: {exc}")
    if bad and on_bad == "error":
        raise UserError(f"{origin}: {len(bad)} bad record(s): {_listed(bad)}; --on_bad_record skip drops bad records")
    if bad:
        logger.warning(
            "%s: skipped %d bad record(s) of %d: %s", origin, len(bad), len(bad) + len(examples), _listed(bad)
        )
    return Loaded(examples, [origin], skipped=len(bad))


SHOWN_BAD_RECORDS = 20


def _listed(bad: Sequence[str]) -> str:
    """Every bad record's location and reason, up to SHOWN_BAD_RECORDS, then how many more."""
    more = f"; and {len(bad) - SHOWN_BAD_RECORDS} more" if len(bad) > SHOWN_BAD_RECORDS else ""
    return "; ".join(bad[:SHOWN_BAD_RECORDS]) + more


def _load_file(path: Path, spec: DatasetSpec, on_bad: str, kind: str) -> Loaded:
    """A local file; one of the original release's (any other is in the LLM-Adapters format) is converted."""
    convert = path.name in (*spec.official_test_files, *spec.official_train_files)
    loaded = _examples(_raw_records(path), spec, str(path), convert=convert, on_bad=on_bad, kind=kind)
    loaded.files.append(path)
    return loaded


def _load_hub(spec: DatasetSpec, split: str, on_bad: str, kind: str) -> Loaded:
    """The split at the commit its revision names (``--hub_revisions`` pins another); the commit is recorded."""
    from datasets import load_dataset

    source = spec.hub
    revision = hub.wanted_revision(source.path, source.revision)
    commit = hub.resolve(source.path, "dataset", revision)
    origin = f"hub:{source.path}" + (f"/{source.name}" if source.name else "") + f"@{commit}[{split}]"
    try:
        rows = load_dataset(source.path, source.name, split=split, revision=commit)
    except Exception as exc:  # datasets raises many types for missing / unreachable data  # noqa: BLE001
        raise UserError(f"{origin}: {_load_failure(exc, source.path, split)}") from None
    convert = spec.schema is not None  # Commonsense-170K's file is already in the LLM-Adapters format
    rows_with_place = ((f"row {i}", dict(row)) for i, row in enumerate(rows))
    loaded = _examples(rows_with_place, spec, origin, convert, on_bad, kind)
    loaded.revisions[source.path] = commit
    return loaded


def _load_failure(exc: BaseException, repo: str, split: str) -> str:
    """A missing config or split named with what the repository has; anything else as the hub's own line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if config := re.search(r"BuilderConfig '?([^' ]+)'? not found", text):
        return f"no config {config.group(1)!r}: {text}"
    if "Unknown split" in text or "split" in text.lower() and "not found" in text.lower():
        return f"no split {split!r}: {text}"
    return hub.failure_line(exc, repo, "dataset")


def _load(spec: DatasetSpec, data_dir: str, kind: str, on_bad: str) -> Loaded:
    if on_bad not in BAD_RECORD_MODES:
        raise UserError(f"--on_bad_record must be one of {', '.join(BAD_RECORD_MODES)}, got {on_bad!r}")
    roots = data_roots(data_dir)
    path = _local_file(roots, spec, kind)
    if path is not None:
        return _load_file(path, spec, on_bad, kind)
    local, official = _file_names(spec, kind)
    looked = f"looked for {spec.folder}/{{{', '.join((*local, *official))}}} under {data_dir}"
    split = getattr(spec.hub, f"{kind}_split", None) if spec.hub else None
    if split is None:
        raise UserError(f"no {kind} data for {spec.name}: {looked}")
    try:
        return _load_hub(spec, split, on_bad, kind)
    except UserError as exc:
        raise UserError(f"no {kind} data for {spec.name}: {looked}; {exc}") from None


def load_test_examples(name: str, data_dir: str, on_bad: str = "error") -> Loaded:
    """A benchmark's test set (refusing bad records unless told to skip them)."""
    spec = get_dataset(name)
    if spec.training_only:
        raise UserError(f"{spec.name} is a training set and has no test split")
    return _load(spec, data_dir, "test", on_bad)


def load_train_examples(name: str, data_dir: str, on_bad: str = "skip") -> Loaded:
    """A training set. A mix (Commonsense-170K) whose own file is absent is rebuilt from its parts'
    training sets (the local ones if any part is local, else from the hub), with a warning naming the
    parts that are missing."""
    spec = get_dataset(name)
    if not spec.union_of:
        return _load(spec, data_dir, "train", on_bad)
    roots = data_roots(data_dir)
    path = _find(roots, spec, spec.train_files)
    if path is not None:
        return _load_file(path, spec, on_bad, "train")
    # Local parts first; only when none is local is the hub asked (offline, it would retry for each part).
    local = [name for name in spec.union_of if _local_file(roots, get_dataset(name), "train")]
    parts: list[Loaded] = []
    missing: list[str] = []
    for part in local or spec.union_of:
        try:
            parts.append(load_train_examples(part, data_dir, on_bad))
        except UserError as exc:
            missing.append(part)
            logger.info("%s: %s", spec.name, exc)
    missing += [p for p in spec.union_of if local and p not in local]
    if not parts:
        raise UserError(f"no training data for {spec.name}: no {'/'.join(spec.train_files)} and none of its parts")
    merged = Loaded(
        [e for p in parts for e in p.examples],
        [o for p in parts for o in p.origins],
        [f for p in parts for f in p.files],
        sum(p.skipped for p in parts),
        {repo: commit for p in parts for repo, commit in p.revisions.items()},
    )
    if missing:
        logger.warning(
            "%s not found: built %s from the %d examples of %s; missing tasks: %s",
            "/".join(spec.train_files), spec.name, len(merged.examples), ", ".join(merged.origins), ", ".join(missing),
        )  # fmt: skip
    return merged


_ANSWER_FORMAT = re.compile(r"Answer format: (\S+)\s*$")


def answer_options(example: Example, spec: DatasetSpec) -> list[str]:
    """The options this question offers, from its own 'Answer format: a/b/c' line (an ARC question may have 3 or 5)."""
    match = _ANSWER_FORMAT.search(example["instruction"])
    if match:
        options = match.group(1).split("/")
        if all(option in spec.keywords for option in options) and example["answer"] in options:
            return options
    return list(spec.keywords)
