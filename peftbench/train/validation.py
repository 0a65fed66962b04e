"""Validation that cannot go NaN, and the metrics a checkpoint can be chosen by (``--select_checkpoint``).

The Trainer's own evaluation averages per-batch mean losses. A batch whose labels are all masked has
a mean of 0/0 = NaN, NaN never compares as better, and the best checkpoint is then never chosen,
silently (likely with ``--batch 1`` or ``2`` on long prompts). Here every label token weighs the
same whatever batch it falls in, and a batch without label tokens adds nothing.

Beside ``eval_loss`` (the official rule) it reports ``eval_answer_loss``, the loss on the answer keyword's
tokens alone ("true" of "the correct answer is true", which a loss over the whole response hides behind
the template tokens), and, when asked, ``eval_accuracy``: log-likelihood accuracy on the validation
examples with the evaluation's own scorer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerState,
    TrainingArguments,
)

from peftbench.config import RunConfig
from peftbench.data.prompts import IGNORE_INDEX, build_prompt
from peftbench.data.protocols import Protocol, get_protocol
from peftbench.data.registry import DatasetSpec, get_dataset
from peftbench.evaluate.loglik import score_questions

# --select_checkpoint -> the validation metric the best checkpoint is chosen by (lower is better, but accuracy).
SELECTION_METRICS = {"loss": "eval_loss", "answer_loss": "eval_answer_loss", "accuracy": "eval_accuracy"}

logger = logging.getLogger(__name__)


class AnswerLabelCollator(DataCollatorForSeq2Seq):
    """DataCollatorForSeq2Seq that also pads ``answer_labels`` (validation only) to the labels' width."""

    def __call__(self, features: list[dict[str, Any]], return_tensors: str | None = None) -> dict[str, Any]:
        answers = [f.pop("answer_labels") for f in features] if "answer_labels" in features[0] else None
        batch = super().__call__(features, return_tensors)
        if answers is not None:
            width = batch["labels"].shape[1]
            batch["answer_labels"] = torch.tensor([a + [IGNORE_INDEX] * (width - len(a)) for a in answers])
        return batch


def option_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[dict[str, str]],
    spec: DatasetSpec,
    protocol: Protocol,
    batch: int,
) -> float:
    """Log-likelihood accuracy on the examples, scored exactly as ``--eval_mode loglik`` scores a benchmark."""
    prompts = [build_prompt(e, protocol) for e in examples]
    scored = score_questions(model, tokenizer, examples, prompts, spec, protocol, batch)
    correct = sum(options[scores.best()] == e["answer"] for e, (options, scores) in zip(examples, scored, strict=True))
    return correct / len(examples)


class ValidationShard(TorchDataset):
    """One process's share of the validation set: every ``processes``-th example from ``process``, then label-free
    copies of the first example until every share is equally long.

    Every process must run as many forward passes, because ZeRO-3 and FSDP gather the weights inside each one.
    accelerate's ``even_batches`` fills the last batches with real examples, which the summed loss would count
    twice (120 examples at batch 64 over 8 processes: 512 rows); a copy without labels adds nothing to the sums.
    """

    def __init__(self, dataset: Sequence[dict[str, Any]], process: int, processes: int) -> None:
        self.dataset = dataset
        self.indices = list(range(process, len(dataset), processes))
        self.examples = len(self.indices)
        self.length = -(-len(dataset) // processes)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < self.examples:
            return self.dataset[self.indices[index]]
        filler = dict(self.dataset[0])
        for key in ("labels", "answer_labels"):
            if key in filler:
                filler[key] = [IGNORE_INDEX] * len(filler[key])
        return filler


def validation_metrics(totals: torch.Tensor, accuracy: float | None, prefix: str) -> dict[str, float]:
    """The metrics of the validation totals summed over every process: [loss, tokens, answer loss, answer tokens,
    batches without a label token]. With no label token at all ``eval_loss`` is inf: no checkpoint is chosen
    by it, and the run records why (``checkpoint_selection``)."""
    tokens = int(totals[1])
    if not tokens:
        logger.warning("validation set has no label tokens: no checkpoint can be chosen by validation loss")
    metrics = {
        f"{prefix}_loss": _mean(totals[0], totals[1]),
        f"{prefix}_answer_loss": _mean(totals[2], totals[3]),
        f"{prefix}_label_tokens": tokens,
        f"{prefix}_batches_without_labels": int(totals[4]),
    }
    if accuracy is not None:
        metrics[f"{prefix}_accuracy"] = accuracy
    return metrics


def _mean(total: torch.Tensor, count: torch.Tensor) -> float:
    """Loss per token; inf (never chosen as best) when there is no token."""
    return float(total / count) if count else float("inf")


def validation_accuracy(
    config: RunConfig, tokenizer: PreTrainedTokenizerBase, examples: list[dict[str, str]]
) -> Callable[[PreTrainedModel], float] | None:
    """model -> log-likelihood accuracy on the validation examples, computed only when it chooses the checkpoint."""
    if config.select_checkpoint != "accuracy" or not examples:
        return None
    spec = get_dataset(config.dataset)
    protocol = get_protocol(config.protocol, spec.task)
    return lambda model: option_accuracy(model, tokenizer, examples, spec, protocol, config.batch)


def eval_loss_at(state: TrainerState, checkpoint: Path) -> float | None:
    """The validation loss at the checkpoint's step, whatever metric chose it; None where none ran there."""
    step = int(checkpoint.name.rsplit("-", 1)[1])
    losses = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry and entry["step"] == step]
    return losses[-1] if losses else None


def checkpoint_selection(args: TrainingArguments, state: TrainerState) -> str:
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
