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
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from peftbench.config import RunConfig
from peftbench.data.pipeline import build_datasets
from peftbench.data.registry import get_dataset
from peftbench.device import DeviceMemory, device_memory, peak_memory
from peftbench.engines import (
    configure_fsdp,
    engine_precision,
    fsdp_config,
    launch_one_deepspeed_process,
    start_deepspeed_on_cpu,
    whole_model,
)
from peftbench.errors import TrainingInterrupted, UserError
from peftbench.execution import (
    Execution,
    Fits,
    executed_tokens,
    keeps_packed_sequences_apart,
    label_positions,
    label_token_loss,
    logits_at_labels_only,
    memory_probe,
    pack_step,
    plan_execution,
    real_tokens,
    regroup_by_length,
    reserved_bytes,
)
from peftbench.guards import DiskSpaceGuard, DivergenceGuard, InterruptSaver
from peftbench.kernels import kernel_names
from peftbench.methods import Method, get_method
from peftbench.models import (
    Precision,
    choose_precision,
    count_parameters,
    load_base_model,
    load_tokenizer,
    resolve_model_path,
)
from peftbench.protocols import get_protocol
from peftbench.runs import RUN_RECORD, append_record, choose_run_folder, environment_record
from peftbench.tracking import start_training_run
from peftbench.validation import AnswerLabelCollator, TokenWeightedTrainer, option_accuracy

# --select_checkpoint -> the validation metric the best checkpoint is chosen by (lower is better, but accuracy).
SELECTION_METRICS = {"loss": "eval_loss", "answer_loss": "eval_answer_loss", "accuracy": "eval_accuracy"}

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path  # the best checkpoint by validation loss, else the last
    metrics: dict[str, Any]


class RunStatsCallback(TrainerCallback):
    """Adds wall time and peak memory to the Trainer's logs (and so to trainer_state.json)."""

    def __init__(self, memory: DeviceMemory | None) -> None:
        self.start, self.memory = time.perf_counter(), memory

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:  # noqa: ANN001
        if logs is not None:
            stats = {"elapsed_s": round(time.perf_counter() - self.start, 2), **peak_memory(self.memory)}
            logs.update(stats)  # what is printed
            if state.log_history:  # what trainer_state.json keeps: the Trainer stored a copy of logs before this call
                state.log_history[-1].update(stats)


class MethodSchedule(TrainerCallback):
    """Runs the method's own step (AdaLoRA's rank allocation) and checks the run is the length it was built for."""

    def __init__(self, method: Method, total_steps: int | None) -> None:
        self.method, self.total_steps = method, total_steps

    def on_train_begin(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if self.total_steps is not None and state.max_steps != self.total_steps:
            raise RuntimeError(
                f"{self.method.name} was built for {self.total_steps} steps, the run takes {state.max_steps}"
            )

    def on_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:  # noqa: ANN001
        if self.method.after_optimizer_step is not None:
            self.method.after_optimizer_step(model, state.global_step)


class GroupedStepTrainer(TokenWeightedTrainer):
    """TokenWeightedTrainer that packs each step's sequences (``packing``) or regroups its micro-batches by
    length (``group_by_length``), after the Trainer has counted the step's label tokens; counts the padding it
    executes (``padding``: real and executed tokens, summed over the run) and, given
    ``compute_loss_func=label_token_loss``, asks the model for logits at the label positions only."""

    def __init__(
        self,
        *args: Any,
        execution: Execution,
        pad_token_id: int,
        penalty_share: Callable[[torch.nn.Module, float], AbstractContextManager[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.execution, self.pad_token_id, self.penalty_share = execution, pad_token_id, penalty_share
        self.padding = {"real_tokens": 0, "executed_tokens": 0}

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        configure_fsdp(self)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):  # noqa: ANN001, ANN201
        batches, label_tokens = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, label_tokens
        self.padding["real_tokens"] += real_tokens(batches)
        if self.execution.packing:
            batches = pack_step(batches, self.pad_token_id)
        elif self.execution.group_by_length and len(batches) > 1:
            batches = regroup_by_length(batches, self.pad_token_id)
        self.padding["executed_tokens"] += executed_tokens(batches)
        return batches, label_tokens

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        if self.compute_loss_func is label_token_loss:
            inputs = {**inputs, "logits_to_keep": label_positions(inputs["labels"])}
        if self.penalty_share is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # The step's forwards: its micro-batches (fewer in an epoch's last step) on every process.
        share = 1 / (self.current_gradient_accumulation_steps * self.accelerator.num_processes)
        with self.penalty_share(self.model, share):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


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


def train(config: RunConfig) -> TrainResult:
    """Train one method; with several processes (torchrun, accelerate launch) this runs in each of them."""
    set_seed(config.seed)
    method = get_method(config.peft_type)
    precision = choose_precision(config.load_bit, full_finetune=method.full_finetune)
    model_path = resolve_model_path(config.model_name)
    tokenizer = load_tokenizer(model_path)
    data = build_datasets(config, tokenizer)  # before the model: fail fast
    train_data, validation_data, data_info = data.train, data.validation, data.info

    literal = plan_execution("spec", config.batch, config.grad_acc, config.enable_grad_ckpt, fits=None)
    launch_one_deepspeed_process(config.ds_config)
    evaluate = validation_data is not None
    args = training_arguments(config, literal, precision.bf16, precision.fp16, evaluate)
    args.device  # noqa: B018 -- sets up the process group (torchrun / accelerate launch) behind distributed_state
    processes = args.distributed_state
    start_deepspeed_on_cpu(config.ds_config)
    refuse_data_parallel(args.n_gpu)
    if config.fsdp is not None and processes.num_processes == 1:
        raise UserError("--fsdp shards the model over several processes: run it under torchrun --nproc_per_node N")
    memory = device_memory(processes.device)
    total_steps = (
        optimizer_steps(len(train_data), config, processes.num_processes) if method.needs_total_steps else None
    )
    model = method.apply(load_base_model(model_path, precision.dtype), config.adapter_settings(total_steps))
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    parameters = count_parameters(model)
    label_logits_only = logits_at_labels_only(model)
    compute = {**kernel_names(model), "logits": "label positions" if label_logits_only else "all"}
    packing = _packs(config, model)
    probe = _memory_probe(config, method, model, precision, processes, memory, data_info["longest_sequence"], packing)
    execution = _plan_execution(config, probe, packing, processes)
    if memory is not None:
        memory.reset_peak()  # the peak a run records is training's own, not the probe's
    logger.info("execution: %d × %d per device (%s)%s", execution.micro_batch, execution.grad_acc, execution.why,
                ", sequences packed" if execution.packing else "")  # fmt: skip
    if execution != literal:
        args = training_arguments(config, execution, precision.bf16, precision.fp16, evaluate)
    logger.info(
        "%s: %d trainable of %d parameters (%.4f%%)",
        config.peft_type,
        parameters["trainable_params"],
        parameters["total_params"],
        parameters["trainable_percent"],
    )

    target = choose_run_folder(config, processes)
    run_dir, record_path = target.run_dir, target.run_dir / RUN_RECORD
    args.output_dir = str(run_dir)  # known only now: process 0 names it once the processes can talk
    report_to, tracker_callbacks, tracking = start_training_run(config.report_to, run_dir)
    args.report_to = [] if report_to == "none" else [report_to]
    if target.checkpoint is not None and method.resume_limit is not None:
        raise UserError(f"{method.name} cannot resume: {method.resume_limit}; train again without --resume")
    if processes.is_main_process:
        if target.resumed:
            resumed_from = str(target.checkpoint) if target.checkpoint else "the start (no complete checkpoint)"
            resume = {"event": "resume", "from": resumed_from, "execution": execution.record(), "compute": compute,
                      "tracking": tracking}  # fmt: skip
            append_record(record_path, {**resume, "environment": environment_record()})
            logger.info("resuming %s from %s", run_dir, resumed_from)
        else:
            append_record(
                record_path,
                {
                    "config": dataclasses.asdict(config),
                    "model_path": model_path,
                    "precision": precision.name,
                    "precision_policy": precision.policy(model)
                    | engine_precision(config.ds_config, precision.autocast),
                    "parameters": parameters,
                    "data": data_info,
                    "processes": processes.num_processes,
                    "execution": execution.record(),
                    "compute": compute,
                    "tracking": tracking,
                    "environment": environment_record(),
                },
            )
    logger.info("run folder: %s", run_dir)

    interrupt, divergence = InterruptSaver(), DivergenceGuard()
    disk = DiskSpaceGuard(model, run_dir, saves_full_model=method.full_finetune)
    trainer = GroupedStepTrainer(
        execution=execution,
        pad_token_id=tokenizer.pad_token_id,
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=validation_data,
        data_collator=AnswerLabelCollator(tokenizer, padding=True, pad_to_multiple_of=8),
        processing_class=tokenizer,
        callbacks=[
            RunStatsCallback(memory),
            interrupt,
            divergence,
            disk,
            MethodSchedule(method, total_steps),
            *tracker_callbacks,
        ],  # fmt: skip
        accuracy=_validation_accuracy(config, tokenizer, data.validation_examples),
        compute_loss_func=label_token_loss if label_logits_only else None,
        penalty_share=method.penalty_share,
    )
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(target.checkpoint) if target.checkpoint else None)
    train_time = time.perf_counter() - start
    state = trainer.state
    _raise_if_stopped(config, state.global_step, divergence, disk, interrupt, run_dir, processes)

    trainer.save_state()  # trainer_state.json in the run folder
    checkpoint = Path(state.best_model_checkpoint or run_dir / f"checkpoint-{state.global_step}")
    selection = _checkpoint_selection(args, state)
    metrics = {
        "event": "train_end",
        "train_loss": output.training_loss,
        "global_step": state.global_step,
        "selection_metric": args.metric_for_best_model,
        "best_metric": state.best_metric,
        "best_eval_loss": _eval_loss_at(state, checkpoint),  # the chosen checkpoint's, whatever chose it
        "best_checkpoint": str(checkpoint),
        "checkpoint_selection": selection,
        "train_time_s": round(train_time, 2),
        "train_samples_per_s": output.metrics.get("train_samples_per_second"),
        "padding_fraction": _padding_fraction(trainer.padding),
        "distributed": trainer.accelerator.distributed_type.value,  # what accelerate ran: NO, MULTI_GPU, FSDP, ...
        **peak_memory(memory),
        **parameters,
    }
    if processes.is_main_process:
        torch.save(trainer.args, run_dir / "training_args.bin")
        append_record(record_path, metrics)
    logger.info("training done in %.1f s; checkpoint to evaluate: %s", train_time, checkpoint)
    return TrainResult(run_dir=run_dir, checkpoint=checkpoint, metrics=metrics)


def refuse_data_parallel(gpus_in_process: int) -> None:
    """Several GPUs seen by one process make the Trainer wrap the model in ``nn.DataParallel``, which computes
    the loss once on the gathered logits and then multiplies it by the GPU count (and AdaLoRA's step count
    disagrees with its schedule): one process per GPU is the only way that trains the same model."""
    if gpus_in_process > 1:
        raise UserError(
            f"this process sees {gpus_in_process} GPUs, and one process would train on them through "
            f"nn.DataParallel (loss and gradients × {gpus_in_process}); run one process per GPU: "
            f"torchrun --nproc_per_node {gpus_in_process} train_hira.py <the same flags>, "
            "or choose one GPU with CUDA_VISIBLE_DEVICES=0"
        )


def _memory_probe(
    config: RunConfig,
    method: Method,
    model: PreTrainedModel,
    precision: Precision,
    processes: PartialState,
    memory: DeviceMemory | None,
    longest: int,
    packing: bool,
) -> Fits | None:
    """What ``--micro_batch auto`` plans with: a probe of this model on this device, or None where there is
    nothing to probe (a CPU) or the model is not whole in this process (DeepSpeed, FSDP)."""
    if memory is None or config.micro_batch != "auto" or config.sharded_engine is not None:
        return None
    model.to(processes.device)
    reserved = reserved_bytes(model, processes.num_processes)
    probe = memory_probe(model, memory, longest, packing, reserved, precision.autocast)
    can_checkpoint = "enable_grad_ckpt" not in method.refuses  # prefix tuning cannot

    def fits(size: int, checkpointing: bool) -> bool:
        return (can_checkpoint or not checkpointing) and probe(size, checkpointing)

    return fits


def _plan_execution(config: RunConfig, fits: Fits | None, packing: bool, processes: PartialState) -> Execution:
    """The micro-batch, checkpointing and packing of this run; every process runs process 0's plan."""
    plan = plan_execution(config.micro_batch, config.batch, config.grad_acc, config.enable_grad_ckpt, fits)
    plans = [dataclasses.replace(plan, packing=packing and plan.group_by_length)]
    if processes.num_processes > 1:
        broadcast_object_list(plans, from_process=0)
    return plans[0]


def _packs(config: RunConfig, model: torch.nn.Module) -> bool:
    """Packing where asked or left to ``auto`` and the model keeps packed sequences apart; asked for and
    impossible is an error, not a silent fallback."""
    if config.packing is False or config.micro_batch == "spec":  # spec: the flags literally
        return False
    with whole_model(model):  # under ZeRO-3 every process holds the whole model meanwhile
        apart = keeps_packed_sequences_apart(model)
    if apart:
        return True
    if config.packing:
        raise UserError(
            f"--packing: {config.model_name} with {config.peft_type} does not keep packed sequences apart "
            "(prompt learning, or a model that ignores restarting position ids); use --no-packing"
        )
    return False


def _padding_fraction(padding: dict[str, int]) -> float | None:
    executed = padding["executed_tokens"]
    return round(1 - padding["real_tokens"] / executed, 4) if executed else None


def optimizer_steps(examples: int, config: RunConfig, processes: int) -> int:
    """The optimizer steps the Trainer will take: --max_steps, else epochs × ceil(micro-batches / grad_acc)."""
    if config.max_steps > 0:
        return config.max_steps
    micro_batches = math.ceil(examples / (config.batch * processes))
    return math.ceil(config.epoch * math.ceil(micro_batches / config.grad_acc))


def _validation_accuracy(
    config: RunConfig, tokenizer: PreTrainedTokenizerBase, examples: list[dict[str, str]]
) -> Callable[[PreTrainedModel], float] | None:
    """model -> log-likelihood accuracy on the validation examples, computed only when it chooses the checkpoint."""
    if config.select_checkpoint != "accuracy" or not examples:
        return None
    spec, protocol = get_dataset(config.dataset), get_protocol(config.protocol)
    return lambda model: option_accuracy(model, tokenizer, examples, spec, protocol, config.batch)


def _eval_loss_at(state: TrainerState, checkpoint: Path) -> float | None:
    step = int(checkpoint.name.rsplit("-", 1)[1])
    losses = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry and entry["step"] == step]
    return losses[-1] if losses else None


def _checkpoint_selection(args: TrainingArguments, state: TrainerState) -> str:
    """How the checkpoint to evaluate was chosen; says so when validation could not choose one."""
    if args.eval_strategy == "no":
        return "last (no validation)"
    if args.metric_for_best_model is None:
        return "last (--select_checkpoint last)"
    if state.best_model_checkpoint is not None:
        return f"best {args.metric_for_best_model} on the validation set"
    why = "validation never ran" if state.best_metric is None else f"every validation gave {state.best_metric}"
    logger.warning("no checkpoint could be chosen by validation (%s): evaluating the last one", why)
    return f"last: no checkpoint could be chosen by validation ({why})"


def _raise_if_stopped(
    config: RunConfig,
    step: int,
    divergence: DivergenceGuard,
    disk: DiskSpaceGuard,
    interrupt: InterruptSaver,
    run_dir: Path,
    processes: PartialState,
) -> None:
    """Turn a guard's stop into a recorded event and one clear message."""
    record_path = run_dir / RUN_RECORD
    if divergence.diverged_at is not None:
        at_step, loss = divergence.diverged_at
        event, message = (
            "diverged",
            (f"training loss became {loss} at step {at_step}; try --load_bit 32 or a lower --lr (now {config.lr})"),
        )
    elif disk.shortfall is not None:
        at_step, free = disk.shortfall
        event, message = (
            "disk_full",
            (
                f"not enough free disk for the checkpoint at step {at_step} in {run_dir}: "
                f"{free / 2**30:.2f} GB free, about {disk.needed_bytes / 2**30:.2f} GB needed"
            ),
        )
    elif interrupt.received is not None:
        checkpoint = run_dir / f"checkpoint-{step}"
        if processes.is_main_process:
            append_record(
                record_path, {"event": "interrupted", "signal": interrupt.received, "checkpoint": str(checkpoint)}
            )
        raise TrainingInterrupted(
            f"{interrupt.received} received: saved {checkpoint} at step {step}; "
            "resume with the same command plus --resume"
        )
    else:
        return
    if processes.is_main_process:
        append_record(record_path, {"event": event, "step": at_step, "message": message})
    raise UserError(message)
