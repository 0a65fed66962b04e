"""`peftbench data prepare` and `peftbench data stats`."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from peftbench.data.prompts import build_prompt
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
    _write(out / COMMON_170K.train_files[0], load_train_examples(COMMON_170K.name, data_dir))


def _percentiles(lengths: list[int]) -> str:
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return f"{p50:.0f}/{p90:.0f}/{p99:.0f}/{max(lengths)}"


def stats_rows(names: list[str], data_dir: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[list[str]]:
    """Per dataset and split: examples, label balance, token lengths (prompt + answer), examples cut at max_length."""
    rows = [["dataset", "split", "examples", "labels", "tokens p50/p90/p99/max", f"> {max_length} (truncated)"]]
    for name in names:
        for split, load in (("test", load_test_examples), ("train", load_train_examples)):
            try:
                loaded = load(name, data_dir)
            except UserError:
                continue
            examples = loaded.examples
            counts = Counter(e["answer"] for e in examples)
            balance = " ".join(f"{k}:{100 * v / len(examples):.0f}%" for k, v in sorted(counts.items()))
            texts = [build_prompt(e) + e["output"] for e in examples]
            lengths = [len(ids) + 1 for ids in tokenizer(texts)["input_ids"]]  # + EOS
            over = sum(n > max_length for n in lengths)
            rows.append([name, split, str(len(examples)), balance, _percentiles(lengths), str(over)])
    return rows
