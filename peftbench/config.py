"""Run and evaluation settings: the single source of truth for what a run does.

``RunConfig`` (training) and ``EvalConfig`` (evaluation) are validated where they are built,
are what the command-line flags map onto (see ``peftbench.cli``), and are written verbatim
into each run's ``output.jsonl`` so a checkpoint can always be evaluated with the settings
that produced it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.data.registry import get_dataset, resolve_names
from peftbench.engines import check_fsdp, read_ds_config
from peftbench.errors import UserError
from peftbench.execution import check_micro_batch
from peftbench.methods import METHOD_FLAGS, METHODS, Method, get_method
from peftbench.methods.common import AdapterSettings
from peftbench.protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from peftbench.tracking import TRACKERS, check_tracker

ZERO_SHOT = "zero-shot"  # the method label of a base model evaluated without training
EVAL_STRATEGIES = ("no", "steps", "epoch")
EVAL_MODES = ("generate", "loglik")
CHECKPOINT_RULES = ("loss", "answer_loss", "accuracy", "last")
BAD_RECORD_MODES = ("skip", "error")
DEFAULT_MODEL = "EleutherAI/gpt-neo-1.3B"
# The official HiRA code keeps its LLM-Adapters files here; PEFTBENCH_DATA_DIR overrides it.
DEFAULT_DATA_DIR = "data_file/llm_adapt"


# Defaults of settings that a protocol leaves open.
RUN_FALLBACKS: dict[str, Any] = {"epoch": 1.0, "eval_steps": 80, "target_modules": "q_proj,v_proj"}


def default_data_dir() -> str:
    return os.environ.get("PEFTBENCH_DATA_DIR", DEFAULT_DATA_DIR)


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class RunConfig:
    """Everything that determines a training run; saved as the first line of output.jsonl."""

    peft_type: str = field(default="hira", metadata=_help("Method to train.", choices=tuple(METHODS)))
    protocol: str = field(
        default=DEFAULT_PROTOCOL,
        metadata=_help(
            "Named set of prompt, tokenization, validation and default choices (README, 'Protocols'); any flag "
            "given overrides its value.",
            choices=tuple(PROTOCOLS),
        ),
    )
    model_name: str = field(
        default=DEFAULT_MODEL,
        metadata=_help("Base model: a Hugging Face hub id, a local directory, or 'smollm2-135m' (embedded)."),
    )
    dataset: str = field(default="common_170k", metadata=_help("Training dataset (see `peftbench data list`)."))
    r_ab: int | None = field(
        default=None,
        metadata=_help("Rank of the methods that have one (README, 'Methods'). Method or protocol default."),
    )
    lora_alpha: float | None = field(
        default=None,
        metadata=_help("Alpha of LoRA and its variants, LoHa, LoKr; default r_ab times the method's ratio."),
    )
    lora_dropout: float | None = field(
        default=None, metadata=_help("Adapter dropout of LoRA, DoRA, PiSSA, AdaLoRA, VeRA. Method default.")
    )
    hira_dropout: float | None = field(default=None, metadata=_help("Dropout on HiRA's input (default 0)."))
    hira_keep_product: bool = field(
        default=False,
        metadata=_help("HiRA: keep W0 ⊙ (1 + BA) for backward instead of rebuilding it (faster, more memory)."),
    )
    target_modules: str | None = field(
        default=None,
        metadata=_help("Comma-separated module names to adapt, for methods that adapt layers (default q_proj,v_proj)."),
    )
    virtual_tokens: int | None = field(
        default=None, metadata=_help("Virtual tokens of prefix and prompt tuning (prefix 8 as official, prompt 20).")
    )
    batch: int | None = field(default=None, metadata=_help("Per-device batch size. Protocol default."))
    grad_acc: int | None = field(default=None, metadata=_help("Gradient accumulation steps. Protocol default."))
    lr: float | None = field(default=None, metadata=_help("Peak learning rate. Protocol default."))
    epoch: float | None = field(default=None, metadata=_help("Number of training epochs (default 1)."))
    warmup: int | None = field(default=None, metadata=_help("Linear warm-up steps. Protocol default."))
    weight_decay: float | None = field(default=None, metadata=_help("AdamW weight decay. Protocol default."))
    load_bit: int = field(
        default=16,
        metadata=_help("16: bf16 where supported, else fp16 on GPU / fp32 on CPU; 32: fp32.", choices=(16, 32)),
    )
    enable_grad_ckpt: bool = field(
        default=False,
        metadata=_help("Gradient checkpointing; with --micro_batch auto, only where the memory needs it."),
    )
    micro_batch: str = field(
        default="auto",
        metadata=_help(
            "How a step's --batch × --grad_acc sequences are executed (same examples, same gradient): 'auto' "
            "(the largest micro-batch the GPU fits, each step regrouped by length), 'spec' (the flags literally) "
            "or a number of sequences."
        ),
    )
    packing: bool | None = field(
        default=None,
        metadata=_help(
            "Pack each step's sequences into shared rows (no padding; each still attends only to itself). "
            "Default: wherever the model keeps packed sequences apart, except with --micro_batch spec; "
            "--no-packing: regroup by length only."
        ),
    )
    seed: int = field(default=36, metadata=_help("Random seed (data split, init, data order)."))
    eval_strategy: str | None = field(
        default=None, metadata=_help("When to compute validation loss. Protocol default.", choices=EVAL_STRATEGIES)
    )
    eval_steps: int | None = field(
        default=None, metadata=_help("Validation (and checkpoint) interval in optimizer steps (default 80).")
    )
    save_total_limit: int | None = field(
        default=None,
        metadata=_help("Keep at most this many checkpoints (the best is always kept). Protocol default; 0: all."),
    )
    output_folder: str | None = field(
        default=None, metadata=_help("Parent folder of the run; default results_{peft_type}.")
    )
    select_checkpoint: str = field(
        default="loss",
        metadata=_help(
            "Which checkpoint to evaluate: loss (validation loss, the official rule), answer_loss (loss on the "
            "answer keyword's tokens only), accuracy (log-likelihood accuracy on the validation examples), last.",
            choices=CHECKPOINT_RULES,
        ),
    )
    max_length: int = field(default=256, metadata=_help("Maximum tokens per training example."))
    val_set_size: int = field(default=120, metadata=_help("Examples held out of the training data for validation."))
    train_on_inputs: bool | None = field(
        default=None,
        metadata=_help("Train on the prompt tokens too (--no-train_on_inputs: the answer only). Protocol default."),
    )
    max_steps: int = field(
        default=-1, metadata=_help("Stop after this many optimizer steps (-1: train --epoch epochs).")
    )
    max_train_samples: int | None = field(
        default=None, metadata=_help("Train on a seeded sample of this many examples.")
    )
    on_bad_record: str = field(
        default="skip",
        metadata=_help(
            "Training records that would be mislabelled: skip (with a summary) or error.", choices=BAD_RECORD_MODES
        ),
    )
    logging_steps: int = field(default=10, metadata=_help("Log the training loss every N optimizer steps."))
    resume: bool = field(
        default=False,
        metadata=_help("Continue the newest unfinished run of this configuration from its newest complete checkpoint."),
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata=_help("'auto' (as --resume) or a checkpoint folder to continue from.")
    )
    ds_config: str | None = field(default=None, metadata=_help("DeepSpeed config file (see ds_configs/)."))
    fsdp: str | None = field(
        default=None,
        metadata=_help(
            "Shard the model over the processes with FSDP2: what TrainingArguments.fsdp takes, e.g. "
            "'full_shard auto_wrap' (README, 'Scaling')."
        ),
    )
    report_to: str = field(
        default="none",
        metadata=_help("Experiment tracker the run logs to (the Trainer's; README, 'Studies').", choices=TRACKERS),
    )
    data_dir: str = field(
        default_factory=default_data_dir,
        metadata=_help("Comma-separated folders holding <dataset>/{train,test}.json (env PEFTBENCH_DATA_DIR)."),
    )

    def __post_init__(self) -> None:
        self.peft_type = self.peft_type.lower()
        check_tracker(self.report_to)
        method = get_method(self.peft_type)
        _reject_foreign_flags(self, method)
        self._fill_defaults(method)
        if "r_ab" in method.flags and self.r_ab <= 0:
            raise UserError(f"--r_ab must be a positive integer for {self.peft_type}, got {self.r_ab}")
        if self.load_bit not in (16, 32):
            raise UserError(f"--load_bit must be 16 or 32, got {self.load_bit}")
        get_dataset(self.dataset)
        if self.select_checkpoint not in CHECKPOINT_RULES:
            raise UserError(f"--select_checkpoint must be one of {', '.join(CHECKPOINT_RULES)}")
        if self.eval_strategy not in EVAL_STRATEGIES:
            raise UserError(f"--eval_strategy must be one of {', '.join(EVAL_STRATEGIES)}, got {self.eval_strategy!r}")
        _require_positive(
            batch=self.batch,
            grad_acc=self.grad_acc,
            eval_steps=self.eval_steps,
            max_length=self.max_length,
            max_train_samples=self.max_train_samples,
            logging_steps=self.logging_steps,
            virtual_tokens=self.virtual_tokens,
        )
        check_micro_batch(self.micro_batch, self.batch, self.grad_acc)
        if self.packing and self.micro_batch == "spec":
            raise UserError("--packing changes how a step runs; --micro_batch spec runs the flags literally")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if "target_modules" in method.flags and not self.target_module_list:
            raise UserError(f"--target_modules is empty; {self.peft_type} needs at least one module name")
        if self.resume and self.resume_from_checkpoint is None:
            self.resume_from_checkpoint = "auto"
        if self.ds_config is not None:
            if not Path(self.ds_config).is_file():
                raise UserError(f"--ds_config {self.ds_config} does not exist")
            read_ds_config(self.ds_config)
        if self.fsdp is not None:
            check_fsdp(self.fsdp)
            if self.ds_config is not None:
                raise UserError("--fsdp and --ds_config are two engines; choose one")
        if self.sharded_engine is not None and method.sharding_limit is not None:
            raise UserError(f"{self.peft_type} cannot train under {self.sharded_engine}: {method.sharding_limit}")
        if self.output_folder is None:
            self.output_folder = f"results_{self.peft_type}"

    def _fill_defaults(self, method: Method) -> None:
        """Every setting left unset takes the method's value, then the protocol's, then peftbench's own default;
        a method flag only for the methods built from it."""
        protocol = get_protocol(self.protocol)
        for name, value in {**RUN_FALLBACKS, **protocol.run_defaults, **method.defaults}.items():
            if getattr(self, name) is None and (name not in METHOD_FLAGS or name in method.flags):
                setattr(self, name, value)
        if "lora_alpha" in method.flags and self.lora_alpha is None:
            self.lora_alpha = method.alpha_per_rank * self.r_ab

    @classmethod
    def from_record(cls, saved: dict[str, Any]) -> RunConfig:
        """The RunConfig of a saved output.jsonl record, from any peftbench version: unknown fields and method
        flags the method is not built from (older records stored every flag for every method) are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        flags = get_method(str(saved.get("peft_type", "hira")).lower()).flags
        return cls(**{k: v for k, v in saved.items() if k in known and (k not in METHOD_FLAGS or k in flags)})

    def adapter_settings(self, total_steps: int | None = None) -> AdapterSettings:
        """The plain values the method is built from (``total_steps``: the run's optimizer steps)."""
        return AdapterSettings(
            rank=self.r_ab,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout if self.lora_dropout is not None else self.hira_dropout,
            targets=tuple(self.target_module_list),
            virtual_tokens=self.virtual_tokens,
            total_steps=total_steps,
            keep_product=self.hira_keep_product,
        )

    @property
    def sharded_engine(self) -> str | None:
        """The engine that shards the model over the processes (--ds_config, --fsdp), None for DDP or one process:
        no process holds the whole model, so nothing may run it outside the engine or plan on its whole size."""
        return "deepspeed" if self.ds_config is not None else "fsdp" if self.fsdp is not None else None

    @property
    def target_module_list(self) -> list[str]:
        return [name.strip() for name in (self.target_modules or "").split(",") if name.strip()]

    def run_folder_name(self, timestamp: str) -> str:
        model = Path(self.model_name.rstrip("/")).name
        return f"{model}-{self.dataset}-{self.peft_type}-lr={self.lr}-seed={self.seed}-{timestamp}"


@dataclass
class EvalConfig:
    """What one evaluation does: which model, which benchmark, how to decode."""

    ckpt: str | None = field(default=None, metadata=_help("Checkpoint folder to evaluate (a run's checkpoint-N)."))
    model_name: str | None = field(
        default=None, metadata=_help("Evaluate this base model zero-shot instead of a checkpoint.")
    )
    dataset: str = field(default="boolq", metadata=_help("Benchmark(s): a name, a comma-separated list, or 'all'."))
    eval_mode: str = field(
        default="generate",
        metadata=_help(
            "generate: beam search + answer keyword (the papers' protocol); "
            "loglik: argmax of each option's response log-probability.",
            choices=EVAL_MODES,
        ),
    )
    protocol: str | None = field(
        default=None,
        metadata=_help(
            "Prompt and decoding protocol; default: the checkpoint's own (hira for a base model).",
            choices=tuple(PROTOCOLS),
        ),
    )
    batch: int = field(
        default=16, metadata=_help("Questions per pass: generation prompts, or log-likelihood questions.")
    )
    beam_size: int | None = field(default=None, metadata=_help("Beams for generation. Protocol default (4)."))
    max_new_tokens: int | None = field(
        default=None, metadata=_help("Maximum generated tokens per answer. Protocol default (hira: 16).")
    )
    max_eval_samples: int | None = field(
        default=None, metadata=_help("Evaluate a seeded sample of this many examples.")
    )
    load_bit: int = field(default=16, metadata=_help("Precision, as for training.", choices=(16, 32)))
    seed: int = field(default=36, metadata=_help("Seed of the evaluation sample."))
    output_dir: str | None = field(default=None, metadata=_help("Where results go; default the checkpoint folder."))
    overwrite: bool = field(default=False, metadata=_help("Redo datasets whose complete results already exist."))
    on_bad_record: str = field(
        default="error",
        metadata=_help("Test records that would be mislabelled: error or skip.", choices=BAD_RECORD_MODES),
    )
    report_to: str = field(
        default="none",
        metadata=_help("Log the accuracies to the tracker run of the checkpoint's training run.", choices=TRACKERS),
    )
    data_dir: str = field(default_factory=default_data_dir, metadata=_help("As for training."))

    def __post_init__(self) -> None:
        resolve_names(self.dataset)
        check_tracker(self.report_to)
        if self.eval_mode not in EVAL_MODES:
            raise UserError(f"--eval_mode must be one of {', '.join(EVAL_MODES)}, got {self.eval_mode!r}")
        if (self.ckpt is None) == (self.model_name is None):
            raise UserError("give exactly one of --ckpt (a trained checkpoint) or --model_name (zero-shot)")
        _require_positive(
            batch=self.batch,
            beam_size=self.beam_size,
            max_new_tokens=self.max_new_tokens,
            max_eval_samples=self.max_eval_samples,
        )
        if self.ckpt is None and self.output_dir is None:
            raise UserError("zero-shot evaluation (--model_name) needs --output_dir")

    def with_protocol(self, name: str) -> EvalConfig:
        """This configuration with the protocol fixed (the checkpoint's, unless --protocol was given) and the
        decoding settings left unset taken from it."""
        protocol = get_protocol(self.protocol or name)
        unset = {k: v for k, v in protocol.eval_defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, protocol=protocol.name, **unset)


def _reject_foreign_flags(config: RunConfig, method: Method) -> None:
    """One error naming every method flag given that the method is not built from (e.g. --r_ab for ia3)."""
    given = [name for name in METHOD_FLAGS if getattr(config, name) is not None and getattr(config, name) is not False]
    foreign = [f"--{name}" for name in given if name not in method.flags]
    if foreign:
        takes = ", ".join(f"--{name}" for name in method.flags) or "none"
        raise UserError(f"{', '.join(foreign)} does not apply to {method.name} (its method flags: {takes})")
    for name, why in method.refuses.items():
        if getattr(config, name):
            raise UserError(f"{method.name} cannot train with --{name}: {why}")


def _require_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")


@dataclass
class BenchSettings:
    """`peftbench bench train` settings (each field is a flag)."""

    models: str = field(
        default="neo-6l,smollm2-135m",
        metadata=_help("of neo-6l (GPT-Neo-1.3B geometry, 6 layers), neo-1.3b, smollm2-135m"),
    )
    methods: str = field(
        default=",".join([*METHODS, "hira-keep", "peft-hira"]),
        metadata=_help("methods to compare: any --peft_type, hira-keep (--hira_keep_product), peft-hira (PEFT's HiRA)"),
    )
    batch: int = field(default=2, metadata=_help("sequences per step"))
    seq: int = field(default=256, metadata=_help("tokens per sequence"))
    rank: int = field(default=64, metadata=_help("r of the methods that take one and have none of their own"))
    targets: str = field(default="q_proj,v_proj", metadata=_help("adapted modules"))
    dtype: str = field(default="fp32", metadata=_help("fp32, or bf16 on a GPU"))
    repeats: int = field(default=5, metadata=_help("measured steps per method"))
    warmup: int = field(default=1, metadata=_help("unmeasured steps per method first"))
    no_memory: bool = field(default=False, metadata=_help("skip the per-method memory processes"))

    @property
    def model_list(self) -> list[str]:
        return self.models.split(",")

    @property
    def method_list(self) -> list[str]:
        return self.methods.split(",")
