"""The training recipe: RunConfig -> model + data -> transformers.Trainer -> a run folder.

Run folder (the specification's layout)::

    {output_folder}/{model}-{dataset}-{method}-lr={lr}-seed={seed}-{timestamp}/
        checkpoint-{step}/      adapter (PEFT format) or full model, plus tokenizer
        output.jsonl            line 1: full configuration, environment, data, parameters; last: results
        trainer_state.json      loss history, best checkpoint
        training_args.bin       the TrainingArguments
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from peftbench.config import RUN_RECORD, RunConfig, append_record, environment_record, timestamp
from peftbench.data.prompts import tokenize_batch
from peftbench.data.sources import files_sha256, load_train_examples
from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.models import choose_precision, count_parameters, load_base_model, load_tokenizer, resolve_model_path

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path  # the best checkpoint by validation loss, else the last
    metrics: dict[str, Any]


def build_datasets(
    config: RunConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """Seeded validation hold-out (as the official HiRA code), optional seeded subsample, tokenization."""
    examples, paths = load_train_examples(config.dataset, config.data_dir)
    data = Dataset.from_list(examples)
    validation = None
    if config.val_set_size > 0:
        if config.val_set_size >= len(data):
            raise UserError(f"--val_set_size {config.val_set_size} leaves no training data ({len(data)} examples)")
        split = data.train_test_split(test_size=config.val_set_size, shuffle=True, seed=config.seed)
        data, validation = split["train"], split["test"]
    if config.max_train_samples is not None and config.max_train_samples < len(data):
        data = data.shuffle(seed=config.seed).select(range(config.max_train_samples))
    info = {
        "files": [str(p) for p in paths],
        "sha256": files_sha256(paths),
        "train_examples": len(data),
        "validation_examples": len(validation) if validation is not None else 0,
        "train_on_inputs": config.train_on_inputs,
    }
    tokenize_args = {"tokenizer": tokenizer, "max_length": config.max_length, "train_on_inputs": config.train_on_inputs}

    def tokenized(dataset: Dataset) -> Dataset:
        return dataset.map(tokenize_batch, batched=True, fn_kwargs=tokenize_args, remove_columns=dataset.column_names)

    return tokenized(data), (tokenized(validation) if validation is not None else None), info


class RunStatsCallback(TrainerCallback):
    """Adds wall time and peak memory to the Trainer's logs (and so to trainer_state.json)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:  # noqa: ANN001
        if logs is not None:
            logs.update(elapsed_s=round(time.perf_counter() - self.start, 2), **peak_memory())


def peak_memory() -> dict[str, float]:
    """GPU: max allocated by torch; CPU: peak resident set size of this process."""
    if torch.cuda.is_available():
        return {"peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
    return {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def make_run_dir(config: RunConfig) -> Path:
    """A new folder; a second run started in the same second gets a suffix instead of sharing it."""
    base = Path(config.output_folder).resolve() / config.run_folder_name(timestamp())
    candidate, suffix = base, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1


def training_arguments(config: RunConfig, run_dir: Path, bf16: bool, fp16: bool, evaluate: bool) -> TrainingArguments:
    eval_strategy = config.eval_strategy if evaluate else "no"
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=config.batch,
        per_device_eval_batch_size=config.batch,
        gradient_accumulation_steps=config.grad_acc,
        learning_rate=config.lr,
        num_train_epochs=config.epoch,
        max_steps=config.max_steps,
        warmup_steps=config.warmup,
        weight_decay=config.weight_decay,
        bf16=bf16,
        fp16=fp16,
        # Non-reentrant checkpointing works with frozen embeddings (adapters) without enable_input_require_grads.
        activation_checkpointing=config.enable_grad_ckpt,
        activation_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy=eval_strategy,
        eval_steps=config.eval_steps,
        # A checkpoint at each evaluation, so the best by validation loss can be kept; the Trainer also saves the last.
        save_strategy="epoch" if eval_strategy == "epoch" else "steps",
        save_steps=config.eval_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=eval_strategy != "no",
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        data_seed=config.seed,
        label_names=["labels"],
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def train(config: RunConfig) -> TrainResult:
    set_seed(config.seed)
    method = get_method(config.peft_type)
    precision = choose_precision(config.load_bit, full_finetune=method.full_finetune)
    model_path = resolve_model_path(config.model_name)
    tokenizer = load_tokenizer(model_path)
    train_data, validation_data, data_info = build_datasets(config, tokenizer)  # before the model: fail fast

    model = method.apply(load_base_model(model_path, precision.dtype), config)
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    parameters = count_parameters(model)
    logger.info(
        "%s: %d trainable of %d parameters (%.4f%%)",
        config.peft_type,
        parameters["trainable_params"],
        parameters["total_params"],
        parameters["trainable_percent"],
    )

    run_dir = make_run_dir(config)
    record_path = run_dir / RUN_RECORD
    append_record(
        record_path,
        {
            "config": dataclasses.asdict(config),
            "model_path": model_path,
            "precision": precision.name,
            "parameters": parameters,
            "data": data_info,
            "environment": environment_record(),
        },
    )
    logger.info("run folder: %s", run_dir)

    args = training_arguments(config, run_dir, precision.bf16, precision.fp16, evaluate=validation_data is not None)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=validation_data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8),
        processing_class=tokenizer,
        callbacks=[RunStatsCallback()],
    )
    start = time.perf_counter()
    output = trainer.train()
    train_time = time.perf_counter() - start
    trainer.save_state()  # trainer_state.json in the run folder
    torch.save(trainer.args, run_dir / "training_args.bin")

    state = trainer.state
    checkpoint = Path(state.best_model_checkpoint or run_dir / f"checkpoint-{state.global_step}")
    metrics = {
        "event": "train_end",
        "train_loss": output.training_loss,
        "global_step": state.global_step,
        "best_eval_loss": state.best_metric,
        "best_checkpoint": str(checkpoint),
        "train_time_s": round(train_time, 2),
        "train_samples_per_s": output.metrics.get("train_samples_per_second"),
        **peak_memory(),
        **parameters,
    }
    append_record(record_path, metrics)
    logger.info("training done in %.1f s; checkpoint to evaluate: %s", train_time, checkpoint)
    return TrainResult(run_dir=run_dir, checkpoint=checkpoint, metrics=metrics)
