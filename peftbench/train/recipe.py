"""The training recipe: RunConfig -> model + data -> transformers.Trainer -> a run folder.

``train`` reads as its four phases, each run in every process:

- setup: the method, data, processes and model (``_setup``);
- plan: how a step executes on this device, agreed by every process (``_plan``, with ``plan``);
- fit: the run folder opened or resumed, then the Trainer (``trainer``) with its callbacks (``callbacks``)
  trains until done or stopped (``_open_run``, ``_fit``);
- finish: the last record and the checkpoint to evaluate (``_finish``).

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
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import PartialState
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import TrainOutput

from peftbench import hub
from peftbench.config import RunConfig
from peftbench.data.pipeline import TrainingData, build_datasets
from peftbench.errors import UserError
from peftbench.methods import Method, get_method
from peftbench.models.device import DeviceMemory, device_memory, peak_memory
from peftbench.models.kernels import kernel_names
from peftbench.models.load import load_base_model, load_tokenizer, model_fingerprint, resolve_model_path
from peftbench.models.precision import Precision, choose_precision, count_parameters
from peftbench.runs.folders import ResumePoint, choose_run_folder
from peftbench.runs.records import RUN_RECORD, append_record, environment_record
from peftbench.runs.tracking import start_training_run
from peftbench.train.batches import PAD_MULTIPLE
from peftbench.train.callbacks import Guards, MethodSchedule, RunStatsCallback
from peftbench.train.engines import (
    engine_precision,
    fsdp_config,
    launch_one_deepspeed_process,
    start_deepspeed_on_cpu,
)
from peftbench.train.loss import label_token_loss, logits_at_labels_only
from peftbench.train.plan import (
    Execution,
    agreed_execution,
    micro_batch_probe,
    optimizer_steps,
    packing_for,
    plan_execution,
    refuse_data_parallel,
)
from peftbench.train.trainer import RecipeTrainer
from peftbench.train.validation import (
    SELECTION_METRICS,
    AnswerLabelCollator,
    checkpoint_selection,
    eval_loss_at,
    validation_accuracy,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path  # the best checkpoint by validation loss, else the last
    metrics: dict[str, Any]


@dataclasses.dataclass
class _Setup:
    """What every process builds before the plan."""

    config: RunConfig
    method: Method
    precision: Precision
    model_path: str
    tokenizer: PreTrainedTokenizerBase
    data: TrainingData
    literal: Execution  # the flags as given: what the Trainer's settings say until the plan replaces them
    args: TrainingArguments
    processes: PartialState
    memory: DeviceMemory | None
    total_steps: int | None
    model: PreTrainedModel
    parameters: dict[str, Any]
    label_logits_only: bool
    compute: dict[str, str]


@dataclasses.dataclass
class _Run:
    """The run folder this run writes: a new one, or the run it resumes."""

    run_dir: Path
    checkpoint: Path | None  # the checkpoint to resume from
    tracker_callbacks: list[TrainerCallback]


class _Fitted(NamedTuple):
    trainer: RecipeTrainer
    output: TrainOutput
    train_time: float


def train(config: RunConfig) -> TrainResult:
    """Train one method; with several processes (torchrun, accelerate launch) this runs in each of them."""
    setup = _setup(config)
    execution, args = _plan(setup)
    run = _open_run(setup, execution, args)
    fitted = _fit(setup, execution, args, run)
    return _finish(setup, args, run, fitted)


def _setup(config: RunConfig) -> _Setup:
    """In the order that matters: the data before the model (fail fast), the process group before anything
    broadcasts, the model once the Trainer's settings exist (ZeRO-3 loads it sharded under them)."""
    set_seed(config.seed)
    hub.pin(config.hub_revisions)
    method = get_method(config.peft_type)
    precision = choose_precision(config.load_bit, full_finetune=method.full_finetune)
    model_path = resolve_model_path(config.model_name)
    tokenizer = load_tokenizer(model_path)
    data = build_datasets(config.data_settings(), tokenizer)  # before the model: fail fast
    literal = plan_execution("spec", config.batch, config.grad_acc, config.enable_grad_ckpt, fits=None)
    args = _start_processes(config, literal, precision, evaluate=data.validation is not None)
    processes = args.distributed_state
    memory = device_memory(processes.device)
    total_steps = (
        optimizer_steps(len(data.train), config, processes.num_processes) if method.needs_total_steps else None
    )
    model = method.apply(load_base_model(model_path, precision.dtype), config.adapter_settings(total_steps))
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    parameters = count_parameters(model)
    label_logits_only = logits_at_labels_only(model)
    compute = {**kernel_names(model), "logits": "label positions" if label_logits_only else "all"}
    return _Setup(config, method, precision, model_path, tokenizer, data, literal, args, processes, memory,
                  total_steps, model, parameters, label_logits_only, compute)  # fmt: skip


def _start_processes(config: RunConfig, literal: Execution, precision: Precision, evaluate: bool) -> TrainingArguments:
    """The Trainer's settings for the flags as given, which set up the process group: nothing may broadcast
    before them, and a ZeRO-3 model loads sharded only while they exist."""
    launch_one_deepspeed_process(config.ds_config)
    args = training_arguments(config, literal, precision.bf16, precision.fp16, evaluate)
    args.device  # noqa: B018 -- sets up the process group (torchrun / accelerate launch) behind distributed_state
    start_deepspeed_on_cpu(config.ds_config)
    refuse_data_parallel(args.n_gpu)
    if config.fsdp is not None and args.distributed_state.num_processes == 1:
        raise UserError("--fsdp shards the model over several processes: run it under torchrun --nproc_per_node N")
    return args


def _plan(setup: _Setup) -> tuple[Execution, TrainingArguments]:
    """How a step executes here, and the Trainer's settings for it."""
    config, memory, precision = setup.config, setup.memory, setup.precision
    packing = packing_for(config, setup.model)
    longest = setup.data.info["longest_sequence"]
    probe = micro_batch_probe(config, setup.method, setup.model, precision, setup.processes, memory, longest, packing)
    execution = agreed_execution(config, probe, packing, setup.processes)
    if memory is not None:
        memory.reset_peak()  # the peak a run records is training's own, not the probe's
    logger.info("execution: %d × %d per device (%s)%s", execution.micro_batch, execution.grad_acc, execution.why,
                ", sequences packed" if execution.packing else "")  # fmt: skip
    args = setup.args
    if execution != setup.literal:
        args = training_arguments(config, execution, precision.bf16, precision.fp16, setup.data.validation is not None)
    parameters = setup.parameters
    logger.info("%s: %d trainable of %d parameters (%.4f%%)", config.peft_type, parameters["trainable_params"],
                parameters["total_params"], parameters["trainable_percent"])  # fmt: skip
    return execution, args


def _open_run(setup: _Setup, execution: Execution, args: TrainingArguments) -> _Run:
    """The run folder, new or resumed, named in the Trainer's settings and started in output.jsonl."""
    config, processes = setup.config, setup.processes
    target = choose_run_folder(config, processes)
    run_dir = target.run_dir
    args.output_dir = str(run_dir)  # known only now: process 0 names it once the processes can talk
    report_to, tracker_callbacks, tracking = start_training_run(config.report_to, run_dir)
    args.report_to = [] if report_to == "none" else [report_to]
    if target.checkpoint is not None and setup.method.resume_limit is not None:
        raise UserError(f"{setup.method.name} cannot resume: {setup.method.resume_limit}; train again without --resume")
    if processes.is_main_process:
        _record_start(setup, execution, target, tracking)
    logger.info("run folder: %s", run_dir)
    return _Run(run_dir, target.checkpoint, tracker_callbacks)


def _record_start(setup: _Setup, execution: Execution, target: ResumePoint, tracking: dict[str, Any]) -> None:
    """output.jsonl's first line, or, resuming, an event saying where the run goes on from."""
    record_path = target.run_dir / RUN_RECORD
    if not target.resumed:
        append_record(record_path, _first_record(setup, execution, tracking))
        return
    resumed_from = str(target.checkpoint) if target.checkpoint else "the start (no complete checkpoint)"
    resume = {"event": "resume", "from": resumed_from, "execution": execution.record(), "compute": setup.compute,
              "tracking": tracking}  # fmt: skip
    append_record(record_path, {**resume, "environment": environment_record()})
    logger.info("resuming %s from %s", target.run_dir, resumed_from)


def _first_record(setup: _Setup, execution: Execution, tracking: dict[str, Any]) -> dict[str, Any]:
    config, precision = setup.config, setup.precision
    return {
        "config": dataclasses.asdict(config),
        "model_path": setup.model_path,
        "model_fingerprint": model_fingerprint(setup.model_path),  # a hub model's commit
        "precision": precision.name,
        "precision_policy": precision.policy(setup.model) | engine_precision(config.ds_config, precision.autocast),
        "parameters": setup.parameters,
        "data": setup.data.info,
        "processes": setup.processes.num_processes,
        "execution": execution.record(),
        "compute": setup.compute,
        "tracking": tracking,
        "environment": environment_record(),
    }


def _fit(setup: _Setup, execution: Execution, args: TrainingArguments, run: _Run) -> _Fitted:
    """Train to the end, or raise what stopped the run (recorded)."""
    guards = Guards(setup.model, run.run_dir, saves_full_model=setup.method.full_finetune)
    trainer = _trainer(setup, execution, args, run, guards)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint else None)
    train_time = time.perf_counter() - start
    guards.raise_if_stopped(trainer.state.global_step, setup.config.lr, setup.processes)
    return _Fitted(trainer, output, train_time)


def _trainer(setup: _Setup, execution: Execution, args: TrainingArguments, run: _Run, guards: Guards) -> RecipeTrainer:
    tokenizer, data = setup.tokenizer, setup.data
    return RecipeTrainer(
        execution=execution,
        pad_token_id=tokenizer.pad_token_id,
        model=setup.model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=AnswerLabelCollator(tokenizer, padding=True, pad_to_multiple_of=PAD_MULTIPLE),
        processing_class=tokenizer,
        callbacks=[
            RunStatsCallback(setup.memory),
            guards.interrupt,
            guards.divergence,
            guards.disk,
            MethodSchedule(setup.method, setup.total_steps),
            *run.tracker_callbacks,
        ],  # fmt: skip
        accuracy=validation_accuracy(setup.config, tokenizer, data.validation_examples),
        compute_loss_func=label_token_loss if setup.label_logits_only else None,
        penalty_share=setup.method.penalty_share,
    )


def _finish(setup: _Setup, args: TrainingArguments, run: _Run, fitted: _Fitted) -> TrainResult:
    """The Trainer's state, the run's last record, and the checkpoint to evaluate."""
    trainer, run_dir = fitted.trainer, run.run_dir
    trainer.save_state()  # trainer_state.json in the run folder
    state = trainer.state
    checkpoint = Path(state.best_model_checkpoint or run_dir / f"checkpoint-{state.global_step}")
    metrics = _last_record(setup, args, fitted, checkpoint)
    if setup.processes.is_main_process:
        torch.save(trainer.args, run_dir / "training_args.bin")
        append_record(run_dir / RUN_RECORD, metrics)
    logger.info("training done in %.1f s; checkpoint to evaluate: %s", fitted.train_time, checkpoint)
    return TrainResult(run_dir=run_dir, checkpoint=checkpoint, metrics=metrics)


def _last_record(setup: _Setup, args: TrainingArguments, fitted: _Fitted, checkpoint: Path) -> dict[str, Any]:
    trainer, output, state = fitted.trainer, fitted.output, fitted.trainer.state
    selection = checkpoint_selection(args, state)
    return {
        "event": "train_end",
        "train_loss": output.training_loss,
        "global_step": state.global_step,
        "selection_metric": args.metric_for_best_model,
        "best_metric": state.best_metric,
        "best_eval_loss": eval_loss_at(state, checkpoint),  # the chosen checkpoint's, whatever chose it
        "best_checkpoint": str(checkpoint),
        "checkpoint_selection": selection,
        "train_time_s": round(fitted.train_time, 2),
        "train_samples_per_s": output.metrics.get("train_samples_per_second"),
        "padding_fraction": trainer.padding_fraction(),
        "distributed": trainer.accelerator.distributed_type.value,  # what accelerate ran: NO, MULTI_GPU, FSDP, ...
        **peak_memory(setup.memory),
        **setup.parameters,
    }


def training_arguments(
    config: RunConfig, execution: Execution, bf16: bool, fp16: bool, evaluate: bool
) -> TrainingArguments:
    """The Trainer's settings; output_dir is set once the run folder is chosen."""
    eval_strategy = config.eval_strategy if evaluate else "no"
    select_by = SELECTION_METRICS.get(config.select_checkpoint)  # None: the last checkpoint
    return TrainingArguments(
        output_dir=config.output_folder,
        per_device_train_batch_size=execution.micro_batch,
        per_device_eval_batch_size=execution.micro_batch,  # validation is token-weighted: any batch gives the same
        gradient_accumulation_steps=execution.grad_acc,
        learning_rate=config.lr,
        num_train_epochs=config.epoch,
        max_steps=config.max_steps,
        warmup_steps=config.warmup,
        weight_decay=config.weight_decay,
        bf16=bf16,
        fp16=fp16,
        # Non-reentrant checkpointing works with frozen embeddings (adapters) without enable_input_require_grads.
        activation_checkpointing=execution.checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy=eval_strategy,
        eval_steps=config.eval_steps,
        # A checkpoint at each evaluation, so the best by validation loss can be kept; the Trainer also saves the last.
        save_strategy="epoch" if eval_strategy == "epoch" else "steps",
        save_steps=config.eval_steps,
        save_total_limit=config.save_total_limit or None,  # 0: keep every checkpoint
        # The Trainer tracks (and never rotates away) the best checkpoint by this metric; nothing reloads it in
        # memory (evaluation loads it from disk), which prompt-learning adapters could not do.
        metric_for_best_model=select_by if eval_strategy != "no" else None,
        greater_is_better=select_by == "eval_accuracy",
        remove_unused_columns=False,  # validation batches carry answer_labels (the datasets hold nothing else)
        logging_steps=config.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach DivergenceGuard, not be averaged away
        deepspeed=config.ds_config,
        fsdp=config.fsdp,
        fsdp_config=fsdp_config() if config.fsdp else None,
        seed=config.seed,
        data_seed=config.seed,
        label_names=["labels"],
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without a GPU, use_cpu is what makes accelerate run several processes as DDP over gloo.
        use_cpu=not torch.cuda.is_available(),
    )
