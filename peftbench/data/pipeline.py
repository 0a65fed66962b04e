"""Training data: load, hold out a seeded validation split, subsample, tokenize (cached on disk)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from datasets import Dataset, load_from_disk
from transformers import PreTrainedTokenizerBase

from peftbench.cache import cache_root
from peftbench.data.prompts import IGNORE_INDEX, PROMPT_CODE_HASH, tokenize_batch
from peftbench.data.protocols import Protocol, get_protocol
from peftbench.data.registry import get_dataset
from peftbench.data.sources import load_train_examples
from peftbench.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSettings:
    """The run settings the training data depend on (``RunConfig.data_settings()`` gives a run's)."""

    dataset: str
    data_dir: str
    on_bad_record: str
    protocol: str
    val_set_size: int
    seed: int
    max_train_samples: int | None
    max_length: int
    train_on_inputs: bool


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a tokenizer by content (vocabulary, merges, normalisation), not by name."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = json.loads(backend.to_str())
        # The last call's truncation/padding settings are stored in it too; they are not the tokenizer.
        content.pop("truncation", None)
        content.pop("padding", None)
    else:
        content = tokenizer.get_vocab()
    text = json.dumps(content, sort_keys=True)
    return hashlib.sha256(f"{text}|{tokenizer.eos_token_id}".encode()).hexdigest()[:16]


def tokenization_key(data_sha256: str, config: DataSettings, tokenizer: PreTrainedTokenizerBase) -> str:
    """Everything the tokenized examples depend on; a change to any of it makes a new cache entry."""
    parts = {
        "data": data_sha256,
        "split": [config.val_set_size, config.seed, config.max_train_samples],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "protocol": data_protocol(config).settings(),
        "prompt_code": PROMPT_CODE_HASH,
        "max_length": config.max_length,
        "train_on_inputs": config.train_on_inputs,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def data_protocol(config: DataSettings) -> Protocol:
    """The run's protocol in its variant for the training set's task."""
    return get_protocol(config.protocol, get_dataset(config.dataset).task)


class TrainingData(NamedTuple):
    train: Dataset
    validation: Dataset | None  # tokenized, with answer_labels beside labels
    validation_examples: list[dict[str, str]]  # the same examples as text, for validation accuracy
    info: dict[str, Any]  # what output.jsonl records about the data


def build_datasets(config: DataSettings, tokenizer: PreTrainedTokenizerBase) -> TrainingData:
    """Seeded validation hold-out (as the official HiRA code), optional seeded subsample, tokenization.

    Tokenized sets are cached under ~/.cache/peftbench/tokenized (or $PEFTBENCH_CACHE), so a second run
    of the same data, split, tokenizer, template, length and masking starts at once.
    """
    loaded = load_train_examples(config.dataset, config.data_dir, config.on_bad_record)
    if not loaded.examples:
        raise UserError(f"no training examples in {', '.join(loaded.origins)}")
    protocol = data_protocol(config)
    data, validation = hold_out_validation(
        Dataset.from_list(loaded.examples), config.val_set_size, protocol, config.seed
    )
    if config.max_train_samples is not None and config.max_train_samples < len(data):
        data = data.shuffle(seed=config.seed).select(range(config.max_train_samples))
    key = tokenization_key(loaded.sha256, config, tokenizer)
    folder = cache_root() / "tokenized"
    folder.mkdir(parents=True, exist_ok=True)
    arguments = {"tokenizer": tokenizer, "protocol": protocol, "max_length": config.max_length,
                 "train_on_inputs": config.train_on_inputs}  # fmt: skip

    def tokenized(dataset: Dataset, part: str, answer_labels: bool = False) -> Dataset:
        # datasets' own map cache is off for in-memory data, so the cache is explicit: one folder per key.
        cached = folder / f"{key}-{part}"
        if cached.is_dir():
            logger.info("tokenized %s loaded from %s", part, cached)
            return load_from_disk(str(cached))
        result = dataset.map(
            tokenize_batch,
            batched=True,
            batch_size=2000,
            fn_kwargs={**arguments, "answer_labels": answer_labels},
            remove_columns=dataset.column_names,
            desc=f"tokenize {part}",
            # Worth the process start-up only for large sets (170k examples: 36 s with 2 processes, 72 s with 1).
            num_proc=min(os.cpu_count() or 1, 8) if len(dataset) > 20_000 else None,
        )
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{key}-{part}-"))
        result.save_to_disk(str(staging))
        try:
            staging.rename(cached)
        except OSError:  # another process (DDP rank) cached it first
            shutil.rmtree(staging, ignore_errors=True)
        return result

    train, without_labels = _drop_examples_without_labels(tokenized(data, "train"))
    lengths = [len(ids) for ids in train["input_ids"]]
    info = {
        "sources": loaded.origins,
        "revisions": loaded.revisions,  # hub repository -> commit
        "sha256": loaded.sha256,
        "skipped_bad_records": loaded.skipped,
        "train_examples": len(data),
        "validation_examples": len(validation) if validation is not None else 0,
        "train_on_inputs": config.train_on_inputs,
        "protocol": config.protocol,
        "validation_rule": f"{protocol.validation_rule} (seed {_validation_seed(protocol, config.seed)})",
        "truncated_examples": sum(length >= config.max_length for length in lengths),
        # What the memory probe plans for: under hira the answer is appended after a prompt cut at max_length.
        "longest_sequence": max(lengths, default=0),
        "dropped_without_labels": without_labels,
        "tokenization_cache": key,
    }
    if validation is None:
        return TrainingData(train, None, [], info)
    return TrainingData(train, tokenized(validation, "validation", answer_labels=True), validation.to_list(), info)


def _validation_seed(protocol: Protocol, run_seed: int) -> int:
    return run_seed if protocol.validation_seed is None else protocol.validation_seed


def hold_out_validation(data: Dataset, size: int, protocol: Protocol, run_seed: int) -> tuple[Dataset, Dataset | None]:
    """(training, validation) by the protocol's rule. hira: Python's random.shuffle with seed 58 and the last
    `size` examples, the official split script's rule, so the validation set is the same for every --seed."""
    if size <= 0:
        return data, None
    if size >= len(data):
        raise UserError(f"--val_set_size {size} leaves no training data ({len(data)} examples)")
    seed = _validation_seed(protocol, run_seed)
    if protocol.validation_rule == "shuffle-tail":
        order = list(range(len(data)))
        random.Random(seed).shuffle(order)
        return data.select(order[:-size]), data.select(order[-size:])
    split = data.train_test_split(test_size=size, shuffle=True, seed=seed)
    return split["train"], split["test"]


def _drop_examples_without_labels(dataset: Dataset) -> tuple[Dataset, int]:
    """Drop examples whose every label is masked (a prompt that fills the whole length): they would train
    nothing, and a step made only of them divides 0 by 0. Returns the kept set and how many were dropped."""
    kept = dataset.filter(lambda labels: any(label != IGNORE_INDEX for label in labels), input_columns="labels")
    dropped = len(dataset) - len(kept)
    if dropped:
        logger.warning("dropped %d of %d training examples: truncation left no label token", dropped, len(dataset))
    if not len(kept):
        raise UserError(f"no training example keeps a label token after truncation ({dropped} dropped)")
    return kept, dropped
