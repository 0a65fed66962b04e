"""`peftbench data prepare` and `peftbench data stats`."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from peftbench.data.prompts import token_lengths, truncation
from peftbench.data.protocols import DEFAULT_MAX_LENGTH, HIRA, PROTOCOLS, TASK_PROTOCOLS, Protocol
from peftbench.data.registry import COMMON_170K, get_dataset
from peftbench.data.sources import Loaded, load_test_examples, load_train_examples
from peftbench.errors import UserError

logger = logging.getLogger(__name__)


def _write(path: Path, loaded: Loaded) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(loaded.examples, indent=1, ensure_ascii=False), encoding="utf-8")
    logger.info("%s: %d examples from %s", path, len(loaded.examples), ", ".join(loaded.origins))


def prepare(out: Path, names: list[str], data_dir: str) -> None:
    """Each benchmark's test (and train, where one exists) set, plus commonsense_170k.json, in the
    LLM-Adapters layout under out/ — a folder that works as --data_dir offline."""
    for name in names:
        spec = get_dataset(name)
        _write(out / spec.folder / "test.json", load_test_examples(name, data_dir))
        try:
            _write(out / spec.folder / "train.json", load_train_examples(name, data_dir))
        except UserError as exc:
            logger.warning("%s has no training set: %s", name, exc)
    try:
        _write(out / COMMON_170K.train_files[0], load_train_examples(COMMON_170K.name, data_dir))
    except UserError as exc:  # the benchmarks above are written all the same
        logger.warning("%s not written: %s", COMMON_170K.train_files[0], exc)


def _percentiles(lengths: list[int]) -> str:
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return f"{p50:.0f}/{p90:.0f}/{p99:.0f}/{max(lengths)}"


def truncation_counts(lengths: list[tuple[int, int]], protocol: Protocol, max_length: int) -> tuple[int, int]:
    """(examples that lose tokens to truncation, examples whose answer is cut away entirely) under a protocol,
    from each example's uncut (prompt, answer) token counts (``token_lengths``)."""
    counts = [truncation(p, a, protocol, max_length) for p, a in lengths]
    return sum(cut for cut, _ in counts), sum(lost for _, lost in counts)


def stats_rows(
    names: list[str], data_dir: str, tokenizer: PreTrainedTokenizerBase, max_length: int | None
) -> list[list[str]]:
    """Per dataset and split: examples, bad records, label balance, token lengths (hira's prompt + answer) and,
    per protocol, the examples cut at max_length and those whose answer is cut away (they would train nothing;
    always 0 under hira). A split that cannot be read is a row too, with the reason, never left out."""
    header = ["dataset", "split", "examples", "bad records", "labels", "tokens p50/p90/p99/max"]
    for name in PROTOCOLS:
        header += [f"{name}: cut at {max_length or 'its max_length'}", f"{name}: answer lost"]
    rows = [header]
    for name in names:
        for split, load in (("test", load_test_examples), ("train", load_train_examples)):
            try:
                loaded = load(name, data_dir, "skip")
            except UserError as exc:
                rows.append([name, split, f"unavailable: {exc}"] + [""] * (len(header) - 3))
                continue
            examples = loaded.examples
            if not examples:
                rows.append([name, split, "0", str(loaded.skipped)] + [""] * (len(header) - 4))
                continue
            task = get_dataset(name).task
            variants = {key: TASK_PROTOCOLS.get((key, task)) for key in PROTOCOLS}
            lengths = {key: token_lengths(examples, tokenizer, p) for key, p in variants.items() if p is not None}
            totals = [p + a for p, a in lengths[HIRA.name]]
            row = [name, split, str(len(examples)), str(loaded.skipped), _balance(examples), _percentiles(totals)]
            for key, protocol in variants.items():
                limit = max_length or protocol.run_defaults.get("max_length", DEFAULT_MAX_LENGTH) if protocol else 0
                cut = truncation_counts(lengths[key], protocol, limit) if protocol else ("-", "-")
                row += [str(count) for count in cut]
            rows.append(row)
    return rows


def _balance(examples: list[dict[str, str]]) -> str:
    """The share of each answer where answers are few (keywords, letters); the count of distinct ones otherwise."""
    counts = Counter(e["answer"] for e in examples)
    if len(counts) > 10:
        return f"{len(counts)} distinct answers"
    return " ".join(f"{k}:{100 * v / len(examples):.0f}%" for k, v in sorted(counts.items()))
