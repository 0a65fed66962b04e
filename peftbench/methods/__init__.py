"""The methods as registry entries: name -> how to apply it to a base model, what it is built from, how to reload it.

This registry is the only place a method is named. ``methods`` knows nothing about data or result files; it
turns a base model into a trainable one from plain settings (``AdapterSettings``) and back from a checkpoint
folder. A method's defaults apply where a flag is not given and come before the protocol's (so VeRA's rank is
VeRA's, not the protocol's r of LoRA and HiRA); each has its source beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from peftbench.errors import UserError
from peftbench.methods import (
    adalora,
    dora,
    fft,
    hira,
    ia3,
    loha,
    lokr,
    lora,
    mora,
    oft,
    pissa,
    prefix,
    prompt,
    ptuning,
    vera,
)
from peftbench.methods.common import AdapterSettings, load_adapter

# RunConfig fields that only some methods are built from; giving one to a method that is not is an error.
METHOD_FLAGS = (
    *("r_ab", "lora_alpha", "lora_dropout", "hira_dropout", "hira_keep_product", "target_modules", "virtual_tokens"),
    "mora_type",
)
LORA_FLAGS = ("r_ab", "lora_alpha", "lora_dropout", "target_modules")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    apply: Callable[[PreTrainedModel, AdapterSettings], nn.Module]
    flags: tuple[str, ...] = ()  # the METHOD_FLAGS it is built from
    defaults: dict[str, Any] = field(default_factory=dict)  # flag -> value when not given
    sources: dict[str, str] = field(default_factory=dict)  # flag -> where its default comes from
    alpha_per_rank: float | None = None  # lora_alpha, when not given, is this × r_ab
    # Rebuild a trained model from (checkpoint folder, base model path, weight dtype).
    load: Callable[[Path, str, torch.dtype], nn.Module] = load_adapter
    full_finetune: bool = False
    changes_base_weights: bool = False  # writes into the frozen base weights when applied (PiSSA's residual)
    needs_total_steps: bool = False  # the run's optimizer steps go into AdapterSettings.total_steps
    # Called with (model, optimizer steps so far) after each optimizer step, before the gradients are zeroed.
    after_optimizer_step: Callable[[nn.Module, int], None] | None = None
    # For a penalty the method adds to every forward's loss: (model, one forward's share of the step) -> a context
    # in which a forward adds only that share, so that a step adds the penalty once however it is executed.
    penalty_share: Callable[[nn.Module, float], AbstractContextManager[None]] | None = None
    merge_limit: str | None = None  # why it cannot be merged into the base weights; None: it can
    resume_limit: str | None = None  # why a run cannot continue from a checkpoint; None: it can
    refuses: dict[str, str] = field(default_factory=dict)  # RunConfig bool flag -> why the method cannot take it
    sharding_limit: str | None = None  # why it cannot train under DeepSpeed ZeRO or FSDP; None: it can
    peft_load_limit: str | None = None  # why plain PEFT cannot load its adapter files; None: it can


# PEFT saves a soft prompt by running its encoder on the saving process alone; under ZeRO-3 or FSDP the encoder's
# weights are sharded, so that forward would wait on processes that never run it (not tested: refused until it is).
_SOFT_PROMPT_SHARDING = (
    "PEFT saves its prompt by running the prompt encoder on one process, whose weights ZeRO-3 and FSDP shard over "
    "all of them; use DDP (torchrun without --ds_config or --fsdp)"
)
_LORA_SOURCE = "LLM-Adapters finetune.py (lora_alpha 16 at r 8, lora_dropout 0.05)"

# The specification's four first, in its order (analysis rows follow this order), then the other baselines.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "hira",
            "Hadamard high-rank adaptation: W0 ⊙ (1 + B A)",
            hira.apply,
            flags=("r_ab", "hira_dropout", "hira_keep_product", "target_modules"),
            defaults={"hira_dropout": 0.0},
            load=hira.load,
        ),
        Method(
            "lora",
            "low-rank update W0 + (alpha / r) B A",
            lora.apply,
            flags=LORA_FLAGS,
            defaults={"lora_dropout": 0.05},
            sources={"lora_alpha": _LORA_SOURCE, "lora_dropout": _LORA_SOURCE},
            alpha_per_rank=2.0,
        ),
        Method("fft", "full fine-tuning: every parameter trains", fft.apply, load=fft.load, full_finetune=True),
        Method(
            "ia3",
            "learned scaling vectors on the targets' activations",
            ia3.apply,
            flags=("target_modules",),
        ),
        Method(
            "dora",
            "LoRA's direction plus a trained magnitude per column",
            dora.apply,
            flags=LORA_FLAGS,
            defaults={"lora_dropout": 0.05},
            sources={"lora_alpha": "DoRA commonsense scripts (alpha 2r)", "lora_dropout": "DoRA commonsense scripts"},
            alpha_per_rank=2.0,
        ),
        Method(
            "mora",
            "square r̂ × r̂ update between fixed compression and decompression maps: high rank at LoRA's count",
            mora.apply,
            flags=("r_ab", "lora_dropout", "mora_type", "target_modules"),
            defaults={"lora_dropout": 0.05, "mora_type": 6},
            sources={
                "lora_dropout": "official MoRA code (kongds/MoRA), train.py: lora_dropout 0.05",
                "mora_type": "official MoRA README: type 6 (RoPE, Eq. 9) for small ranks, type 1 for large ones",
            },
            load=mora.load,
            peft_load_limit="PEFT has no MoRA: it ignores use_mora and mora_type and stops on the square's shape; "
            "load with peftbench or the official MoRA fork of PEFT (docs/methods.md)",
        ),
        Method(
            "pissa",
            "LoRA started at W0's top-r singular triplets, W0 replaced by the residual",
            pissa.apply,
            flags=LORA_FLAGS,
            defaults={"lora_dropout": 0.0},
            sources={"lora_alpha": "PiSSA paper §5 (alpha = r)", "lora_dropout": "PiSSA paper §5 (no dropout)"},
            alpha_per_rank=1.0,
            changes_base_weights=True,
        ),
        Method(
            "adalora",
            "SVD-form LoRA whose ranks are pruned by importance to r on average",
            adalora.apply,
            flags=LORA_FLAGS,
            defaults={"lora_dropout": 0.05},
            sources={"lora_alpha": "as lora", "lora_dropout": "as lora"},
            alpha_per_rank=2.0,
            needs_total_steps=True,
            after_optimizer_step=adalora.update_ranks,
            penalty_share=adalora.penalty_share,
            resume_limit="its importance scores are not in the checkpoint, and its saved ranks are already pruned",
            sharding_limit="its rank allocation reads every parameter's whole gradient after each step, which "
            "ZeRO and FSDP shard over the processes; use DDP (torchrun without --ds_config or --fsdp)",
        ),
        Method(
            "vera",
            "frozen shared random A, B; trained scaling vectors d and b",
            vera.apply,
            flags=("r_ab", "lora_dropout", "target_modules"),
            defaults={"r_ab": 256, "lora_dropout": 0.0},
            sources={"r_ab": "PEFT VeraConfig default r 256", "lora_dropout": "PEFT VeraConfig vera_dropout 0.0"},
        ),
        Method(
            "loha",
            "Hadamard product of two low-rank updates (B1 A1) ⊙ (B2 A2)",
            loha.apply,
            flags=("r_ab", "lora_alpha", "target_modules"),
            sources={"lora_alpha": "PEFT LoHaConfig (r 8, alpha 8)"},
            alpha_per_rank=1.0,
        ),
        Method(
            "lokr",
            "Kronecker product update C ⊗ (B A)",
            lokr.apply,
            flags=("r_ab", "lora_alpha", "target_modules"),
            sources={"lora_alpha": "PEFT LoKrConfig (r 8, alpha 8)"},
            alpha_per_rank=1.0,
        ),
        Method(
            "oft",
            f"block-diagonal orthogonal rotation of W0 ({oft.BLOCK_SIZE} × {oft.BLOCK_SIZE} blocks)",
            oft.apply,
            flags=("target_modules",),
        ),
        Method(
            "prefix",
            "trained keys and values of virtual tokens at every layer",
            prefix.apply,
            flags=("virtual_tokens",),
            defaults={"virtual_tokens": 8},
            sources={"virtual_tokens": "official HiRA code, train_hira.py:54"},
            merge_limit="prefix tuning adds virtual tokens, not a weight change",
            # transformers 5 drops past_key_values in checkpointed layers while PEFT widens the mask for them
            refuses={"enable_grad_ckpt": "gradient checkpointing drops the prefix's keys and values in transformers"},
            sharding_limit=_SOFT_PROMPT_SHARDING,
        ),
        Method(
            "prompt",
            "trained input embeddings of virtual tokens before the prompt",
            prompt.apply,
            flags=("virtual_tokens",),
            defaults={"virtual_tokens": 20},
            sources={"virtual_tokens": "Lester et al. 2021 §3 (gains level off from 20 tokens)"},
            merge_limit="prompt tuning adds virtual tokens, not a weight change",
            sharding_limit=_SOFT_PROMPT_SHARDING,
        ),
        Method(
            "ptuning",
            "input embeddings of virtual tokens produced by a trained MLP from trained embeddings (P-Tuning)",
            ptuning.apply,
            flags=("virtual_tokens",),
            defaults={"virtual_tokens": 20},
            sources={
                "virtual_tokens": "arithmetic: the one count whose PEFT MLP encoder gives the HiRA paper's P-Tuning "
                "shares, 0.7428% (Llama-2-7B) and 0.6240% (Llama-3-8B)"
            },
            merge_limit="P-Tuning adds virtual tokens, not a weight change",
            resume_limit="PEFT saves P-Tuning's virtual-token embeddings after its MLP, not the MLP that trains",
            sharding_limit=_SOFT_PROMPT_SHARDING,
        ),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown --peft_type {name!r}; choose one of {', '.join(METHODS)}") from None
