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
import torch.nn.functional as F
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase, Trainer

from peftbench.data.prompts import IGNORE_INDEX, build_prompt
from peftbench.data.registry import DatasetSpec
from peftbench.errors import UserError
from peftbench.evaluate.loglik import score_questions
from peftbench.execution import label_positions, logits_at_labels_only
from peftbench.protocols import Protocol

logger = logging.getLogger(__name__)
SAFE_ADAPTER_FILE = "adapter_model.safetensors"  # PEFT's adapter weights file


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each next target token (fp32), 0 where the target is ignored: [batch, len - 1]."""
    return F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )


def masked_totals(nll: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[summed NLL of the tokens ``labels`` keeps, their number], in float64."""
    kept = labels[:, 1:] != IGNORE_INDEX
    return torch.stack([nll[kept].sum().double(), kept.sum().double()])


def label_loss_totals(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[summed negative log-likelihood of the label tokens, number of label tokens], in float64."""
    return masked_totals(token_nll(logits, labels), labels)


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


class TokenWeightedTrainer(Trainer):
    """A Trainer whose ``eval_loss`` is the token-weighted loss over the whole validation set.

    With no label token at all it reports ``eval_loss = inf``: no checkpoint is chosen by it, and the
    run records why (see ``train``). ``accuracy`` (model -> validation accuracy) adds ``eval_accuracy``.
    """

    def __init__(self, *args: Any, accuracy: Callable[[PreTrainedModel], float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.accuracy = accuracy
        self.label_logits_only = logits_at_labels_only(self.model)  # as the training loss decides

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume an adapter by loading its weights into the adapter in place. The Trainer's way re-creates the
        adapter with ``load_adapter(is_trainable=True)``, which PEFT refuses for prefix and prompt tuning."""
        model = self.model if model is None else model
        if not isinstance(model, PeftModel) or self.is_fsdp_enabled:  # FSDP's shards load through accelerate
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        weights = load_file(Path(resume_from_checkpoint) / SAFE_ADAPTER_FILE)
        set_peft_model_state_dict(model, weights)
        # What the model would save now must be what the file holds (PEFT's own load report cannot say:
        # it counts prompt-learning weights as missing and unexpected, then loads them separately).
        loaded = get_peft_model_state_dict(model)
        differing = sorted(k for k in loaded.keys() | weights.keys() if k not in loaded or k not in weights
                           or not torch.equal(loaded[k].cpu(), weights[k].to(loaded[k].dtype)))  # fmt: skip
        if differing:
            raise UserError(
                f"{resume_from_checkpoint} does not fit this run's adapter ({len(differing)} weights differ, "
                f"e.g. {differing[0]})"
            )
        return None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:  # noqa: ANN001
        shard = ValidationShard(eval_dataset or self.eval_dataset, self.args.process_index, self.args.world_size)
        batch_size = self.args.per_device_eval_batch_size
        batches = DataLoader(shard, batch_size=batch_size, collate_fn=self.data_collator)
        model, was_training = self.model, self.model.training
        model.eval()
        # loss, tokens, answer loss, answer tokens, batches without a label token
        totals = torch.zeros(5, dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for index, inputs in enumerate(batches):
                inputs = self._prepare_inputs(inputs)
                labels, answer_labels = inputs.pop("labels"), inputs.pop("answer_labels", None)
                # One vocabulary-wide log-softmax serves both: answer tokens are label tokens or, when the labels
                # leave them out, are added as targets here.
                targets = (
                    labels if answer_labels is None else torch.where(labels != IGNORE_INDEX, labels, answer_labels)
                )
                with self.compute_loss_context_manager():
                    nll = self._token_nll(model, inputs, targets)
                batch_totals = masked_totals(nll, labels)
                totals[:2] += batch_totals
                if answer_labels is not None:
                    totals[2:4] += masked_totals(nll, answer_labels)
                totals[4] += int(batch_totals[1] == 0 and index * batch_size < shard.examples)
            accuracy = self.accuracy(model) if self.accuracy is not None else None
        model.train(was_training)
        totals = self.accelerator.reduce(totals, reduction="sum")
        tokens = int(totals[1])
        if not tokens:
            logger.warning("validation set has no label tokens: no checkpoint can be chosen by validation loss")
        metrics = {
            f"{metric_key_prefix}_loss": _mean(totals[0], totals[1]),
            f"{metric_key_prefix}_answer_loss": _mean(totals[2], totals[3]),
            f"{metric_key_prefix}_label_tokens": tokens,
            f"{metric_key_prefix}_batches_without_labels": int(totals[4]),
        }
        if accuracy is not None:
            metrics[f"{metric_key_prefix}_accuracy"] = accuracy
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _token_nll(self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """``token_nll`` of the targets, from logits at the target positions only where the model can (as the
        training loss): a validation batch as large as the training micro-batch would otherwise hold a
        vocabulary-wide fp32 row, and its log-softmax, for every prompt token."""
        if not self.label_logits_only:
            # Prompt tuning returns logits for its virtual tokens too, before the sequence's own.
            return token_nll(model(**inputs).logits[:, -targets.shape[1] :], targets)
        logits = model(**inputs, logits_to_keep=label_positions(targets)).logits
        shifted = targets[:, 1:]
        kept = shifted != IGNORE_INDEX
        nll = torch.zeros(shifted.shape, dtype=torch.float32, device=logits.device)
        nll[kept] = F.cross_entropy(logits.float(), shifted[kept], reduction="none")
        return nll


def _mean(total: torch.Tensor, count: torch.Tensor) -> float:
    """Loss per token; inf (never chosen as best) when there is no token."""
    return float(total / count) if count else float("inf")
