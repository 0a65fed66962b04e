"""Run records: ``output.jsonl`` (line 1: the RunConfig and its context; then events such as ``train_end`` or
``interrupted``) and evaluation results, written so a crash tears at most one line and read so a torn line never
hides the rest; the environment every record carries (library versions, git revision)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from peftbench.config import RunConfig
from peftbench.errors import UserError

logger = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parents[1]  # peftbench/: its code is what a record's git revision vouches for

RUN_RECORD = "output.jsonl"


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, on disk before this returns: a crash can tear at most the line being written."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (a run's output.jsonl, an evaluation result), blank lines ignored.

    A line that does not parse (torn by a killed process) is skipped with a warning naming file and line,
    so one bad line never makes the rest of the folder unreadable."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            logger.warning("%s line %d: skipped, not valid JSON (%s); a torn write?", path, number, exc.msg)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            logger.warning("%s line %d: skipped, not a JSON object", path, number)
    return records


def find_run_record(ckpt: Path) -> Path:
    """output.jsonl lives in the run folder, beside the checkpoint-N folders (or in ckpt itself)."""
    for folder in (ckpt, ckpt.parent):
        if (folder / RUN_RECORD).is_file():
            return folder / RUN_RECORD
    raise UserError(f"no {RUN_RECORD} in {ckpt} or its parent: --ckpt must be a checkpoint of a peftbench run")


def load_run_config(ckpt: Path) -> RunConfig:
    """The RunConfig a checkpoint was trained with (first line of its run's output.jsonl)."""
    record_path = find_run_record(ckpt)
    try:
        saved = read_records(record_path)[0]["config"]
    except (IndexError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"{record_path} is not a peftbench run record ({exc.__class__.__name__})") from exc
    return RunConfig.from_record(saved)


def write_atomic(path: Path, text: str) -> None:
    """Write to a uniquely named temporary file and rename, so a reader never sees half a result and two
    writers of the same file (two evaluations of one checkpoint) never write into each other's file."""
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def environment_record() -> dict[str, Any]:
    """Library versions and git revision, so every result says what produced it."""
    import peft
    import torch
    import transformers

    import peftbench

    return {
        "peftbench": peftbench.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "git_revision": _git_revision(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # the GPUs a study's executor gave it
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_revision() -> str | None:
    """HEAD, marked '-dirty' when the package's code differs from it (the result then is not exactly that commit's)."""
    revision = _git("rev-parse", "HEAD")
    if revision and _git(
        "status", "--porcelain", "--untracked-files=no", "--", str(PACKAGE)
    ):  # the package's code only
        revision += "-dirty"
    return revision
