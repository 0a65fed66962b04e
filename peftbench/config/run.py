"""``RunConfig``: everything that determines a training run, validated where it is built.

It is what the training flags map onto (``peftbench train``, ``train_hira.py``) and is written verbatim as the
first line of each run's ``output.jsonl``, so a checkpoint can always be evaluated with the settings that
produced it. The settings of an evaluation are ``EvalConfig`` (``config/evaluation.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.config.checks import (
    TRACKERS,
    check_fsdp,
    check_micro_batch,
    check_tracker,
    read_ds_config,
    require_positive,
)
from peftbench.config.choices import BAD_RECORD_MODES, HUB_REVISIONS_HELP, default_data_dir, flag_help
from peftbench.data.pipeline import DataSettings
from peftbench.data.protocols import DEFAULT_MAX_LENGTH, DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from peftbench.data.registry import get_dataset
from peftbench.errors import UserError
from peftbench.hub import parse_pins
from peftbench.methods import METHOD_FLAGS, METHODS, Method, get_method
from peftbench.methods.common import AdapterSettings
from peftbench.methods.mora import MORA_TYPES

EVAL_STRATEGIES = ("no", "steps", "epoch")
CHECKPOINT_RULES = ("loss", "answer_loss", "accuracy", "last")
DEFAULT_MODEL = "EleutherAI/gpt-neo-1.3B"


# Defaults of settings that a protocol leaves open.
RUN_FALLBACKS: dict[str, Any] = {
    "epoch": 1.0, "eval_steps": 80, "target_modules": "q_proj,v_proj", "max_length": DEFAULT_MAX_LENGTH,
}  # fmt: skip


@dataclass
class RunConfig:
    """Everything that determines a training run; saved as the first line of output.jsonl."""

    peft_type: str = field(default="hira", metadata=flag_help("Method to train.", choices=tuple(METHODS)))
    protocol: str = field(
        default=DEFAULT_PROTOCOL,
        metadata=flag_help(
            "Named set of prompt, tokenization, validation and default choices (README, 'Protocols'); any flag "
            "given overrides its value.",
            choices=tuple(PROTOCOLS),
        ),
    )
    model_name: str = field(
        default=DEFAULT_MODEL,
        metadata=flag_help("Base model: a Hugging Face hub id, a local directory, or 'smollm2-135m' (embedded)."),
    )
    dataset: str = field(default="common_170k", metadata=flag_help("Training dataset (see `peftbench data list`)."))
    r_ab: int | None = field(
        default=None,
        metadata=flag_help("Rank of the methods that have one (README, 'Methods'). Method or protocol default."),
    )
    lora_alpha: float | None = field(
        default=None,
        metadata=flag_help("Alpha of LoRA and its variants, LoHa, LoKr; default r_ab times the method's ratio."),
    )
    lora_dropout: float | None = field(
        default=None, metadata=flag_help("Adapter dropout of LoRA, DoRA, PiSSA, AdaLoRA, VeRA. Method default.")
    )
    hira_dropout: float | None = field(default=None, metadata=flag_help("Dropout on HiRA's input (default 0)."))
    hira_keep_product: bool = field(
        default=False,
        metadata=flag_help("HiRA: keep W0 ⊙ (1 + BA) for backward instead of rebuilding it (faster, more memory)."),
    )
    target_modules: str | None = field(
        default=None,
        metadata=flag_help(
            "Comma-separated module names to adapt, for methods that adapt layers (default q_proj,v_proj)."
        ),
    )
    virtual_tokens: int | None = field(
        default=None,
        metadata=flag_help(
            "Virtual tokens of prefix tuning, prompt tuning and P-Tuning (prefix 8 as official, prompt and ptuning 20)."
        ),
    )
    mora_type: int | None = field(
        default=None,
        metadata=flag_help(
            "MoRA's compression: 6 (RoPE, the paper's Eq. 9, its README's choice for small ranks) or 1 (sharing, "
            "Eq. 6). Default 6.",
            choices=MORA_TYPES,
        ),
    )
    batch: int | None = field(default=None, metadata=flag_help("Per-device batch size. Protocol default."))
    grad_acc: int | None = field(default=None, metadata=flag_help("Gradient accumulation steps. Protocol default."))
    lr: float | None = field(default=None, metadata=flag_help("Peak learning rate. Protocol default."))
    epoch: float | None = field(default=None, metadata=flag_help("Number of training epochs (default 1)."))
    warmup: int | None = field(default=None, metadata=flag_help("Linear warm-up steps. Protocol default."))
    weight_decay: float | None = field(default=None, metadata=flag_help("AdamW weight decay. Protocol default."))
    load_bit: int = field(
        default=16,
        metadata=flag_help("16: bf16 where supported, else fp16 on GPU / fp32 on CPU; 32: fp32.", choices=(16, 32)),
    )
    enable_grad_ckpt: bool = field(
        default=False,
        metadata=flag_help("Gradient checkpointing; with --micro_batch auto, only where the memory needs it."),
    )
    micro_batch: str = field(
        default="auto",
        metadata=flag_help(
            "How a step's --batch × --grad_acc sequences are executed (same examples, same gradient): 'auto' "
            "(the largest micro-batch the GPU fits, each step regrouped by length), 'spec' (the flags literally) "
            "or a number of sequences."
        ),
    )
    packing: bool | None = field(
        default=None,
        metadata=flag_help(
            "Pack each step's sequences into shared rows (no padding; each still attends only to itself). "
            "Default: wherever the model keeps packed sequences apart, except with --micro_batch spec; "
            "--no-packing: regroup by length only."
        ),
    )
    seed: int = field(default=36, metadata=flag_help("Random seed (data split, init, data order)."))
    eval_strategy: str | None = field(
        default=None, metadata=flag_help("When to compute validation loss. Protocol default.", choices=EVAL_STRATEGIES)
    )
    eval_steps: int | None = field(
        default=None, metadata=flag_help("Validation (and checkpoint) interval in optimizer steps (default 80).")
    )
    save_total_limit: int | None = field(
        default=None,
        metadata=flag_help("Keep at most this many checkpoints (the best is always kept). Protocol default; 0: all."),
    )
    output_folder: str | None = field(
        default=None, metadata=flag_help("Parent folder of the run; default results_{peft_type}.")
    )
    select_checkpoint: str = field(
        default="loss",
        metadata=flag_help(
            "Which checkpoint to evaluate: loss (validation loss, the official rule), answer_loss (loss on the "
            "answer keyword's tokens only), accuracy (log-likelihood accuracy on the validation examples), last.",
            choices=CHECKPOINT_RULES,
        ),
    )
    max_length: int | None = field(
        default=None,
        metadata=flag_help(
            "Maximum tokens per training example (hira: of its prompt; the answer has its own bound). Protocol "
            "default (hira: 256 commonsense, 155 math, 512 dialogue)."
        ),
    )
    val_set_size: int = field(default=120, metadata=flag_help("Examples held out of the training data for validation."))
    train_on_inputs: bool | None = field(
        default=None,
        metadata=flag_help("Train on the prompt tokens too (--no-train_on_inputs: the answer only). Protocol default."),
    )
    max_steps: int = field(
        default=-1, metadata=flag_help("Stop after this many optimizer steps (-1: train --epoch epochs).")
    )
    max_train_samples: int | None = field(
        default=None, metadata=flag_help("Train on a seeded sample of this many examples.")
    )
    on_bad_record: str = field(
        default="skip",
        metadata=flag_help(
            "Training records that would be mislabelled: skip (with a summary) or error.", choices=BAD_RECORD_MODES
        ),
    )
    logging_steps: int = field(default=10, metadata=flag_help("Log the training loss every N optimizer steps."))
    resume: bool = field(
        default=False,
        metadata=flag_help(
            "Continue the newest unfinished run of this configuration from its newest complete checkpoint."
        ),
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata=flag_help("'auto' (as --resume) or a checkpoint folder to continue from.")
    )
    ds_config: str | None = field(default=None, metadata=flag_help("DeepSpeed config file (see ds_configs/)."))
    fsdp: str | None = field(
        default=None,
        metadata=flag_help(
            "Shard the model over the processes with FSDP2: what TrainingArguments.fsdp takes, e.g. "
            "'full_shard auto_wrap' (README, 'Scaling')."
        ),
    )
    report_to: str = field(
        default="none",
        metadata=flag_help("Experiment tracker the run logs to (the Trainer's; README, 'Studies').", choices=TRACKERS),
    )
    hub_revisions: str | None = field(default=None, metadata=flag_help(HUB_REVISIONS_HELP))
    data_dir: str = field(
        default_factory=default_data_dir,
        metadata=flag_help("Comma-separated folders holding <dataset>/{train,test}.json (env PEFTBENCH_DATA_DIR)."),
    )

    def __post_init__(self) -> None:
        self.peft_type = self.peft_type.lower()
        check_tracker(self.report_to)
        parse_pins(self.hub_revisions)
        method = get_method(self.peft_type)
        _reject_foreign_flags(self, method)
        dataset = get_dataset(self.dataset)
        self._fill_defaults(method, dataset.task)
        if "r_ab" in method.flags and self.r_ab <= 0:
            raise UserError(f"--r_ab must be a positive integer for {self.peft_type}, got {self.r_ab}")
        if self.mora_type is not None and self.mora_type not in MORA_TYPES:
            raise UserError(f"--mora_type must be one of {', '.join(map(str, MORA_TYPES))}, got {self.mora_type}")
        if self.load_bit not in (16, 32):
            raise UserError(f"--load_bit must be 16 or 32, got {self.load_bit}")
        if self.select_checkpoint not in CHECKPOINT_RULES:
            raise UserError(f"--select_checkpoint must be one of {', '.join(CHECKPOINT_RULES)}")
        if self.select_checkpoint == "accuracy" and not dataset.has_options:
            raise UserError(
                f"--select_checkpoint accuracy scores answer options by log-likelihood; {dataset.name} "
                f"({dataset.task}) has none: choose loss, answer_loss or last"
            )
        if self.eval_strategy not in EVAL_STRATEGIES:
            raise UserError(f"--eval_strategy must be one of {', '.join(EVAL_STRATEGIES)}, got {self.eval_strategy!r}")
        require_positive(
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

    def _fill_defaults(self, method: Method, task: str) -> None:
        """Every setting left unset takes the method's value, then the protocol's (its variant for the training
        set's task), then peftbench's own default; a method flag only for the methods built from it."""
        protocol = get_protocol(self.protocol, task)
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
            mora_type=self.mora_type,
        )

    def data_settings(self) -> DataSettings:
        """The plain values the training data are built from."""
        return DataSettings(
            dataset=self.dataset,
            data_dir=self.data_dir,
            on_bad_record=self.on_bad_record,
            protocol=self.protocol,
            val_set_size=self.val_set_size,
            seed=self.seed,
            max_train_samples=self.max_train_samples,
            max_length=self.max_length,
            train_on_inputs=self.train_on_inputs,
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
