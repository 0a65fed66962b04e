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
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from peftbench import hub
from peftbench.config import ZERO_SHOT, EvalConfig
from peftbench.data.prompts import build_prompt, eval_prompt_ids, prompt_version
from peftbench.data.protocols import DEFAULT_PROTOCOL, Protocol, get_protocol
from peftbench.data.registry import DatasetSpec, get_dataset, resolve_names
from peftbench.data.sources import Example, load_test_examples
from peftbench.errors import UserError
from peftbench.evaluate.generate import generate_responses
from peftbench.evaluate.loglik import score_questions
from peftbench.evaluate.progress import Progress
from peftbench.evaluate.scoring import CORPUS_SCORERS, accuracy_summary, answer_scorer, dialogue_summary, scorer_name
from peftbench.methods import get_method
from peftbench.models.load import load_base_model, load_tokenizer, model_fingerprint, resolve_model_path
from peftbench.models.precision import Precision, choose_precision
from peftbench.runs.checkpoint import load_trained
from peftbench.runs.folders import resolve_checkpoint
from peftbench.runs.records import environment_record, find_run_record, load_run_config, read_records, write_atomic
from peftbench.runs.tracking import log_evaluation

logger = logging.getLogger(__name__)


@dataclass
class EvalModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    output_dir: Path
    description: dict[str, Any]  # what was evaluated, recorded with every result
    processes: PartialState  # under torchrun / accelerate launch, each process scores a shard
    trained_protocol: str  # the checkpoint's own protocol (the default one for a base model)
    autocast: torch.dtype | None = None  # compute dtype over fp32 weights, as in training


def eval_precision(load_bit: int, peft_type: str | None) -> Precision:
    """The precision a model is evaluated in: as it was trained. A full fine-tuning run trained fp32 weights
    under autocast; stored in bf16 for evaluation, its updates of about lr × steps (1e-3 on a LayerNorm gain of
    1, where bf16's spacing is 8e-3) would round away, and the model tested would not be the model trained."""
    full_finetune = peft_type is not None and get_method(peft_type).full_finetune
    return choose_precision(load_bit, full_finetune=full_finetune)


def load_eval_model(config: EvalConfig) -> EvalModel:
    if config.ckpt is not None:
        ckpt = resolve_checkpoint(Path(config.ckpt))
        precision = eval_precision(config.load_bit, load_run_config(ckpt).peft_type)
        model, tokenizer, run_config = load_trained(ckpt, precision.dtype)
        trained_protocol = run_config.protocol
        output_dir = Path(config.output_dir) if config.output_dir else ckpt
        base_path = resolve_model_path(run_config.model_name)
        adapter = (ckpt / "adapter_config.json").is_file()  # an adapter computes nothing without its base
        description = {
            "ckpt": str(ckpt),
            "model_name": run_config.model_name,
            "peft_type": run_config.peft_type,
            "model_fingerprint": model_fingerprint(str(ckpt)),
            "base_fingerprint": model_fingerprint(base_path) if adapter else None,
        }
    else:
        precision = eval_precision(config.load_bit, None)
        base_path = resolve_model_path(config.model_name)
        model = load_base_model(base_path, precision.dtype)
        tokenizer = load_tokenizer(base_path)
        output_dir = Path(config.output_dir)
        trained_protocol = DEFAULT_PROTOCOL
        description = {
            "ckpt": None,
            "model_name": config.model_name,
            "peft_type": ZERO_SHOT,
            "model_fingerprint": model_fingerprint(base_path),
            "base_fingerprint": None,
        }
    processes = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: several CPU processes talk over gloo
    model.eval().to(processes.device)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Half-precision compute over fp32 weights (full fine-tuning) runs under the autocast training ran under.
    autocast = precision.autocast if precision.dtype == torch.float32 else None
    description["precision"] = precision.name
    description["autocast"] = str(autocast).removeprefix("torch.") if autocast else None
    return EvalModel(model, tokenizer, output_dir, description, processes, trained_protocol, autocast)


def sample_indices(total: int, limit: int | None, seed: int) -> list[int]:
    """A fixed, seeded sample, so every method is scored on the same examples."""
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), limit))


def evaluate(config: EvalConfig) -> list[dict[str, Any]]:
    """Evaluate on each requested dataset; with several, one whose data is missing is reported and skipped."""
    names = resolve_names(config.dataset)
    hub.pin(config.hub_revisions)
    loaded = load_eval_model(config)
    config = config.with_protocol(loaded.trained_protocol)
    if config.protocol != loaded.trained_protocol:
        logger.warning("evaluating under --protocol %s a model trained under %s", config.protocol,
                       loaded.trained_protocol)  # fmt: skip
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


def _generate(
    loaded: EvalModel, spec: DatasetSpec, protocol: Protocol, examples: list[Example], prompts: list[str],
    config: EvalConfig,
) -> list[dict]:  # fmt: skip
    prompt_ids = eval_prompt_ids(loaded.tokenizer, prompts, protocol)
    progress = Progress(len(prompts), f"generate {spec.name}")
    try:
        responses = generate_responses(
            loaded.model, loaded.tokenizer, prompt_ids, config.batch, config.beam_size, config.max_new_tokens,
            progress=progress.update, generation=protocol.generation,
        )  # fmt: skip
    finally:
        progress.close()
    return [{"generated": text} for text in responses]


def _loglik(
    loaded: EvalModel, spec: DatasetSpec, protocol: Protocol, examples: list[Example], prompts: list[str],
    config: EvalConfig,
) -> list[dict]:  # fmt: skip
    progress = Progress(len(examples), f"loglik {spec.name}")
    scored = score_questions(
        loaded.model, loaded.tokenizer, examples, prompts, spec, protocol, config.batch, progress.update
    )
    try:
        return [
            {
                "options": options,
                "logprobs": scores.logprobs,
                "token_counts": scores.token_counts,
                "predicted": options[scores.best()],
                "predicted_norm": options[scores.best(normalise=True)],
            }
            for options, scores in scored
        ]
    finally:
        progress.close()


# --eval_mode -> (how to predict, suffix of the result files); generation keeps the specification's file names.
SCORERS = {"generate": (_generate, ""), "loglik": (_loglik, "_loglik")}


# What an evaluation's outcome depends on, besides the data: a finished result that differs in any is redone.
# The precision too: full fine-tuning evaluated in bf16 storage (before fp32 weights under autocast) is redone.
MODEL_IDENTITY = ("ckpt", "model_name", "peft_type", "model_fingerprint", "base_fingerprint", "prompt_template",
                  "precision", "autocast")  # fmt: skip
DECODING_SETTINGS = ("eval_mode", "beam_size", "max_new_tokens", "load_bit", "protocol")
DIALOGUE_SETTINGS = ("bert_score_model", "bert_score_layers")  # a metric not computed before may be now
# What a result written before tasks existed was, where it does not say: commonsense, scored by keyword.
IDENTITY_BEFORE_TASKS = {"scorer": "keyword"}
SAMPLE_SETTINGS = ("max_eval_samples", "seed")


def _complete_record(result_path: Path) -> dict[str, Any] | None:
    """The result record if its predictions file is there and whole, else None."""
    try:
        record = read_records(result_path)[-1]
        predictions = json.loads((result_path.parent / record["predictions_file"]).read_text(encoding="utf-8"))
        return record if len(predictions) == record["total"] else None
    except (OSError, IndexError, KeyError, json.JSONDecodeError):
        return None


def finished_result(
    result_path: Path, identity: dict[str, Any], sample_size: int, config: EvalConfig
) -> dict[str, Any] | None:
    """The existing result if it was made of the same model, data, prompt and settings; None to (re)do it.

    A result of the same model and decoding on more examples is never replaced by a smaller sample unless
    --overwrite says so (a quick look must not overwrite the full number)."""
    if not result_path.exists():
        return None
    record = _complete_record(result_path)
    if record is None:
        logger.warning("redoing %s: it is incomplete or corrupt", result_path)
        return None
    if config.overwrite:
        return None
    saved_config = record.get("eval_config", {})
    changed = [k for k, v in identity.items() if record.get(k, IDENTITY_BEFORE_TASKS.get(k)) != v]
    changed += [k for k in (*DECODING_SETTINGS, *SAMPLE_SETTINGS) if saved_config.get(k) != getattr(config, k)]
    if record.get("task") == "dialogue":
        changed += [k for k in DIALOGUE_SETTINGS if saved_config.get(k) != getattr(config, k)]
    if not changed:
        logger.info("skipping %s: already evaluated (%s); --overwrite redoes it", result_path, headline(record))
        return record
    if set(changed) <= set(SAMPLE_SETTINGS) and record["total"] > sample_size:
        raise UserError(
            f"{result_path} holds this model's result on {record['total']} examples; this evaluation of "
            f"{sample_size} would replace it: --overwrite replaces it, --output_dir writes elsewhere"
        )
    logger.warning(
        "redoing %s (it was %s): %s changed", result_path, record.get("ckpt") or record.get("model_name"),
        ", ".join(changed),
    )  # fmt: skip
    return None


def _log_to_tracker(ckpt: Path, record: dict[str, Any]) -> None:
    """The accuracy, into the tracker run of the checkpoint's training run (as its output.jsonl records it)."""
    records = read_records(find_run_record(ckpt))
    tracking = next((r["tracking"] for r in reversed(records) if r.get("tracking")), {})  # a resume may add one
    if not tracking:
        logger.warning("%s was trained without --report_to: its accuracies are not logged to a tracker", ckpt)
        return
    try:
        log_evaluation(tracking, int(ckpt.name.rsplit("-", 1)[-1]) if ckpt.name[-1].isdigit() else 0, record)
    except Exception as exc:  # the result is written; a tracker that cannot take it must not lose the rest
        logger.warning("could not log %s's accuracy to %s: %s", record["dataset"], tracking["report_to"], exc)


def evaluate_dataset(loaded: EvalModel, name: str, config: EvalConfig) -> dict[str, Any]:
    spec = get_dataset(name)
    protocol = get_protocol(config.protocol, spec.task)
    config = config.with_decoding(protocol)
    scorer = scorer_name(spec, protocol, config.eval_mode)
    description = loaded.description | {
        "protocol": protocol.name,
        "protocol_settings": protocol.settings(),
        "prompt_template": prompt_version(protocol),
    }
    loaded_data = load_test_examples(name, config.data_dir, config.on_bad_record)
    examples = loaded_data.examples
    if not examples:
        raise UserError(f"no test examples to evaluate in {', '.join(loaded_data.origins)}")
    predict, suffix = SCORERS[config.eval_mode]
    result_path = loaded.output_dir / f"output_{spec.name}{suffix}_eval.jsonl"
    data_sha256 = loaded_data.sha256
    sample = sample_indices(len(examples), config.max_eval_samples, config.seed)
    # The hub commits the examples came from (None for local files, as in results written before they counted).
    data_revisions = dict(loaded_data.revisions) or None
    identity = {k: description[k] for k in MODEL_IDENTITY} | {
        "data_sha256": data_sha256,
        "data_revisions": data_revisions,
        "scorer": scorer,
    }
    if (done := finished_result(result_path, identity, len(sample), config)) is not None:
        return done
    processes = loaded.processes
    # This process's shard of the fixed sample; the shards are merged by example index below.
    indices = sample[processes.process_index :: processes.num_processes]
    chosen = [examples[i] for i in indices]
    prompts = [build_prompt(example, protocol) for example in chosen]

    start = time.perf_counter()
    device = processes.device.type
    with torch.autocast(device, dtype=loaded.autocast or torch.float32, enabled=loaded.autocast is not None):
        rows = predict(loaded, spec, protocol, chosen, prompts, config)
    predictions = _judged(scorer, spec, indices, chosen, prompts, rows)
    if processes.num_processes > 1:
        predictions = sorted(gather_object(predictions), key=lambda p: p["index"])
    wall_time = time.perf_counter() - start
    if scorer in CORPUS_SCORERS:
        bert_model = None if config.bert_score_model == "none" else config.bert_score_model
        summary = dialogue_summary(predictions, dict(enumerate(examples)), bert_model, config.bert_score_layers)
    else:
        summary = accuracy_summary(predictions)
    record = {
        "dataset": spec.name,
        "dataset_version": spec.version,
        "task": spec.task,
        "scorer": scorer,
        "data_source": ", ".join(loaded_data.origins),
        "skipped_bad_records": loaded_data.skipped,
        "data_sha256": data_sha256,
        "data_revisions": data_revisions,
        **description,
        "mode": config.eval_mode,
        "predictions_file": f"predictions_{spec.name}{suffix}.json",
        **summary,
        "dataset_size": len(examples),
        "eval_config": asdict(config),
        "wall_time_s": round(wall_time, 2),
        "examples_per_s": round(len(predictions) / wall_time, 3),
        "processes": processes.num_processes,
        "environment": environment_record(),
    }
    out = loaded.output_dir
    if processes.is_main_process:
        write_atomic(out / record["predictions_file"], json.dumps(predictions, indent=1))
        write_atomic(result_path, json.dumps(record) + "\n")  # last: its presence means the dataset is done
        if config.report_to != "none" and config.ckpt is not None:
            _log_to_tracker(Path(record["ckpt"]), record)
    processes.wait_for_everyone()
    logger.info("%s (%s): %s -> %s", spec.name, config.eval_mode, headline(record), out)
    return record


def headline(record: dict[str, Any]) -> str:
    """The result in a few words: accuracy and counts, or the task's metrics."""
    if "accuracy" in record:
        return f"accuracy {record['accuracy']:.4f} ({record['correct']}/{record['total']})"
    shown = [f"{key} {record[key]:.4f}" for key in record.get("metrics", [])]
    missing = [f"{key} not computed ({why})" for key, why in record.get("not_computed", {}).items()]
    return ", ".join(shown + missing) + f" (n={record['total']})"


def _judged(
    scorer: str, spec: DatasetSpec, indices: list[int], examples: list[Example], prompts: list[str], rows: list[dict]
) -> list[dict[str, Any]]:
    """Prediction rows: index, prompt, what the model produced, the extracted answer, the gold answer and the
    verdict. Log-likelihood rows come with their choice; a corpus scorer judges all rows together, later."""
    judge = None if scorer in CORPUS_SCORERS else answer_scorer(spec, scorer)
    predictions = []
    for index, example, prompt, row in zip(indices, examples, prompts, rows, strict=True):
        prediction = {"index": index, "prompt": prompt, **row}
        if judge is None:
            predictions.append(prediction | {"answer": example["answer"]})
            continue
        if "predicted" in row:
            correct = row["predicted"] == example["answer"]
        else:
            prediction["predicted"], correct = judge(row["generated"], example)
        predictions.append(prediction | {"answer": example["answer"], "correct": correct})
    return predictions
