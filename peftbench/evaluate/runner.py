"""Evaluate a checkpoint (or a base model zero-shot) on one or more benchmarks and write the results.

For each dataset, in the output folder (the checkpoint's, by default)::

    output_{dataset}_eval.jsonl   one record: accuracy, counts, decoding settings, model, data hash, timing
    predictions_{dataset}.json    per example: prompt, generated text, extracted answer, gold answer, correct
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from peftbench.config import RUN_RECORD, EvalConfig, environment_record, load_run_config, write_atomic
from peftbench.data.prompts import build_prompt
from peftbench.data.registry import get_dataset, resolve_names
from peftbench.data.sources import files_sha256, load_test_examples
from peftbench.errors import UserError
from peftbench.evaluate.extract import extract_answer
from peftbench.evaluate.generate import generate_responses
from peftbench.methods import get_method
from peftbench.models import choose_precision, load_base_model, load_tokenizer, resolve_model_path

logger = logging.getLogger(__name__)


@dataclass
class EvalModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    output_dir: Path
    description: dict[str, Any]  # what was evaluated, recorded with every result


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder; a run folder gives its best checkpoint, a results folder its newest run's."""
    if not path.exists():
        raise UserError(f"--ckpt {path} does not exist")
    if (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return path
    record = path / RUN_RECORD
    if record.is_file():
        lines = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines() if line.strip()]
        ends = [line for line in lines if line.get("event") == "train_end"]
        if not ends:
            raise UserError(f"{path} is a run that did not finish training: pass one of its checkpoint-N folders")
        # By name inside this run folder, so results stay usable after the folder is moved.
        return path / Path(ends[-1]["best_checkpoint"]).name
    runs = sorted((p for p in path.iterdir() if (p / RUN_RECORD).is_file()), key=lambda p: p.stat().st_mtime)
    if runs:
        return resolve_checkpoint(runs[-1])
    raise UserError(f"--ckpt {path} is neither a checkpoint, a run folder with {RUN_RECORD}, nor a folder of runs")


def load_eval_model(config: EvalConfig) -> EvalModel:
    precision = choose_precision(config.load_bit)
    if config.ckpt is not None:
        ckpt = resolve_checkpoint(Path(config.ckpt))
        run_config = load_run_config(ckpt)
        base_path = resolve_model_path(run_config.model_name)
        model = get_method(run_config.peft_type).load(ckpt, base_path, precision.dtype)
        has_tokenizer = (ckpt / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(str(ckpt) if has_tokenizer else base_path)
        output_dir = Path(config.output_dir) if config.output_dir else ckpt
        description = {"ckpt": str(ckpt), "model_name": run_config.model_name, "peft_type": run_config.peft_type}
    else:
        base_path = resolve_model_path(config.model_name)
        model = load_base_model(base_path, precision.dtype)
        tokenizer = load_tokenizer(base_path)
        output_dir = Path(config.output_dir)
        description = {"ckpt": None, "model_name": config.model_name, "peft_type": "zero-shot"}
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    output_dir.mkdir(parents=True, exist_ok=True)
    return EvalModel(model, tokenizer, output_dir, {**description, "precision": precision.name})


def sample_indices(total: int, limit: int | None, seed: int) -> list[int]:
    """A fixed, seeded sample, so every method is scored on the same examples."""
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), limit))


def evaluate(config: EvalConfig) -> list[dict[str, Any]]:
    """Evaluate on each requested dataset; with several, one whose data is missing is reported and skipped."""
    names = resolve_names(config.dataset)
    loaded = load_eval_model(config)
    records = []
    for name in names:
        try:
            records.append(evaluate_dataset(loaded, name, config))
        except UserError as exc:
            if len(names) == 1:
                raise
            logger.error("skipping %s: %s", name, exc)
    if not records:
        raise UserError(f"no dataset could be evaluated (of {', '.join(names)}); see the messages above")
    return records


def evaluate_dataset(loaded: EvalModel, name: str, config: EvalConfig) -> dict[str, Any]:
    spec = get_dataset(name)
    examples, path = load_test_examples(name, config.data_dir)
    indices = sample_indices(len(examples), config.max_eval_samples, config.seed)
    chosen = [examples[i] for i in indices]
    prompts = [build_prompt(example) for example in chosen]

    start = time.perf_counter()
    responses = generate_responses(
        loaded.model, loaded.tokenizer, prompts, config.batch, config.beam_size, config.max_new_tokens
    )
    wall_time = time.perf_counter() - start

    predictions = []
    for index, example, prompt, response in zip(indices, chosen, prompts, responses, strict=True):
        predicted = extract_answer(response, spec.keywords)
        predictions.append(
            {
                "index": index,
                "prompt": prompt,
                "generated": response,
                "predicted": predicted,
                "answer": example["answer"],
                "correct": predicted == example["answer"],
            }
        )
    correct = sum(p["correct"] for p in predictions)
    record = {
        "dataset": spec.name,
        "dataset_version": spec.version,
        "data_file": str(path),
        "data_sha256": files_sha256([path]),
        **loaded.description,
        "mode": "generate",
        "accuracy": correct / len(predictions),
        "correct": correct,
        "total": len(predictions),
        "no_answer": sum(not p["predicted"] for p in predictions),
        "dataset_size": len(examples),
        "eval_config": asdict(config),
        "wall_time_s": round(wall_time, 2),
        "examples_per_s": round(len(predictions) / wall_time, 3),
        "environment": environment_record(),
    }
    out = loaded.output_dir
    write_atomic(out / f"predictions_{spec.name}.json", json.dumps(predictions, indent=1))
    write_atomic(out / f"output_{spec.name}_eval.jsonl", json.dumps(record) + "\n")
    logger.info("%s: accuracy %.4f (%d/%d) -> %s", spec.name, record["accuracy"], correct, len(predictions), out)
    return record
