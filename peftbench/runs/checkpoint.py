"""Trained checkpoints: rebuild the model a run produced, and export it as a plain transformers model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.models.load import load_tokenizer, resolve_model_path
from peftbench.models.precision import choose_precision
from peftbench.runs.folders import resolve_checkpoint
from peftbench.runs.records import load_run_config

logger = logging.getLogger(__name__)


def load_trained(ckpt: Path, dtype: torch.dtype) -> tuple[nn.Module, PreTrainedTokenizerBase, RunConfig]:
    """The model of a checkpoint folder, with the settings its run saved beside it."""
    run_config = load_run_config(ckpt)
    base_path = resolve_model_path(run_config.model_name)
    model = get_method(run_config.peft_type).load(ckpt, base_path, dtype)
    tokenizer = load_tokenizer(str(ckpt) if (ckpt / "tokenizer_config.json").is_file() else base_path)
    return model, tokenizer, run_config


def export_merged(ckpt: Path, out: Path, load_bit: int = 32) -> Path:
    """Merge the adapter into the base weights (W0 ⊙ (1 + BA) for HiRA) and save a plain model + tokenizer."""
    ckpt = resolve_checkpoint(ckpt)
    method = get_method(load_run_config(ckpt).peft_type)
    if method.merge_limit is not None:
        raise UserError(
            f"{method.name} cannot be exported as a merged model: {method.merge_limit}; "
            f"evaluate or share the checkpoint folder itself ({ckpt}), which plain PEFT loads"
        )
    model, tokenizer, run_config = load_trained(ckpt, choose_precision(load_bit).dtype)
    if not method.full_finetune:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("exported %s (%s, merged) to %s", ckpt, run_config.peft_type, out)
    return out
