"""Where examples come from: local files in the LLM-Adapters layout or in a benchmark's official schema.

Every example is a dict in the LLM-Adapters format: ``{"instruction", "input", "output", "answer"}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from peftbench.data.registry import DatasetSpec, get_dataset
from peftbench.errors import UserError

logger = logging.getLogger(__name__)
Example = dict[str, str]
REQUIRED_FIELDS = ("instruction", "output", "answer")


def data_roots(data_dir: str) -> list[Path]:
    return [Path(part).expanduser() for part in data_dir.split(",") if part.strip()]


def _find(roots: Sequence[Path], spec: DatasetSpec, files: Sequence[str]) -> Path | None:
    for root in roots:
        for folder in (spec.folder, *spec.extra_folders):
            for name in files:
                if (root / folder / name).is_file():
                    return root / folder / name
    return None


def _read_json_array(path: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON array of examples, found {type(records).__name__}")
    return records


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return records


def _convert_commonsense_qa(record: dict[str, Any]) -> Example:
    """CommonsenseQA's official schema in the style LLM-Adapters uses for ARC and OpenBookQA."""
    labels, texts = record["choices"]["label"], record["choices"]["text"]
    options = " ".join(f"Answer{i}: {text}" for i, text in enumerate(texts, start=1))
    answer_format = "/".join(f"answer{i}" for i in range(1, len(texts) + 1))
    answer = f"answer{labels.index(record['answerKey']) + 1}"
    instruction = (
        f"Please choose the correct answer to the question: {record['question']}\n\n"
        f"{options}\n\nAnswer format: {answer_format}"
    )
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


CONVERTERS: dict[str, Callable[[dict[str, Any]], Example]] = {"commonsense_qa": _convert_commonsense_qa}


def _checked(records: list[dict[str, Any]], spec: DatasetSpec, path: Path) -> list[Example]:
    """Refuse records that would be silently mislabelled: missing fields or an answer outside the keywords."""
    for index, record in enumerate(records):
        missing = [name for name in REQUIRED_FIELDS if not isinstance(record.get(name), str) or not record[name]]
        if missing:
            raise UserError(f"{path}: example {index} lacks {', '.join(missing)}")
        if record["answer"] not in spec.keywords:
            raise UserError(f"{path}: example {index} has answer {record['answer']!r}, not one of {spec.keywords}")
        record.setdefault("input", "")
    return records


def _load_file(path: Path, spec: DatasetSpec) -> list[Example]:
    if path.suffix == ".jsonl":
        if spec.official_schema is None:
            raise UserError(f"{path}: no converter for {spec.name}'s official schema")
        converter = CONVERTERS[spec.official_schema]
        try:
            records = [converter(record) for record in _read_jsonl(path)]
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: record not in {spec.official_schema}'s schema ({exc})") from None
    else:
        records = _read_json_array(path)
    return _checked(records, spec, path)


def load_test_examples(name: str, data_dir: str) -> tuple[list[Example], Path]:
    """A benchmark's test set and the file it came from."""
    spec = get_dataset(name)
    if not spec.has_test:
        raise UserError(f"{spec.name} is a training set and has no test split")
    roots = data_roots(data_dir)
    path = _find(roots, spec, spec.test_files) or _find(roots, spec, spec.official_test_files)
    if path is None:
        wanted = ", ".join((*spec.test_files, *spec.official_test_files))
        raise UserError(f"no test data for {spec.name}: looked for {spec.folder}/{{{wanted}}} under {data_dir}")
    return _load_file(path, spec), path


def load_train_examples(name: str, data_dir: str) -> tuple[list[Example], list[Path]]:
    """A training set and the files it came from.

    Commonsense-170K is the union of the eight LLM-Adapters tasks' training sets; when its file is
    absent it is rebuilt from the per-task train files that are present, with a warning naming the rest.
    """
    spec = get_dataset(name)
    roots = data_roots(data_dir)
    path = _find(roots, spec, spec.train_files)
    if path is not None:
        return _load_file(path, spec), [path]
    wanted = "/".join(spec.train_files)
    if not spec.union_of:
        raise UserError(f"no training data for {spec.name}: looked for {spec.folder}/{wanted} under {data_dir}")
    examples: list[Example] = []
    paths: list[Path] = []
    missing: list[str] = []
    for part in map(get_dataset, spec.union_of):
        part_path = _find(roots, part, part.train_files)
        if part_path is None:
            missing.append(part.name)
            continue
        examples.extend(_load_file(part_path, part))
        paths.append(part_path)
    if not paths:
        raise UserError(f"no training data for {spec.name}: no {wanted} and no <task>/train.json under {data_dir}")
    if missing:
        logger.warning(
            "%s not found: built %s from the %d examples of %s; missing tasks: %s",
            wanted,
            spec.name,
            len(examples),
            ", ".join(p.parent.name for p in paths),
            ", ".join(missing),
        )
    return examples, paths


_ANSWER_FORMAT = re.compile(r"Answer format: (\S+)\s*$")


def answer_options(example: Example, spec: DatasetSpec) -> list[str]:
    """The options this question offers, from its own 'Answer format: a/b/c' line (an ARC question may have 3 or 5)."""
    match = _ANSWER_FORMAT.search(example["instruction"])
    if match:
        options = match.group(1).split("/")
        if all(option in spec.keywords for option in options) and example["answer"] in options:
            return options
    return list(spec.keywords)


def files_sha256(paths: Sequence[Path]) -> str:
    """Content hash of the data files, recorded with every run and result."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
