"""The recipe's ``transformers.Trainer``: what peftbench changes in how the Trainer executes, validates and
resumes a run, each for a reason the Trainer's own way gets wrong or wastes."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer

from peftbench.data.prompts import IGNORE_INDEX
from peftbench.errors import UserError
from peftbench.train.batches import executed_tokens, pack_step, real_tokens, regroup_by_length
from peftbench.train.engines import configure_fsdp
from peftbench.train.loss import (
    label_position_nll,
    label_positions,
    label_token_loss,
    logits_at_labels_only,
    masked_totals,
    token_nll,
)
from peftbench.train.plan import Execution
from peftbench.train.validation import ValidationShard, validation_metrics

SAFE_ADAPTER_FILE = "adapter_model.safetensors"  # PEFT's adapter weights file

PenaltyShare = Callable[[torch.nn.Module, float], AbstractContextManager[None]]


class RecipeTrainer(Trainer):
    """A Trainer that

    - packs each step's sequences (``packing``) or regroups its micro-batches by length (``group_by_length``),
      after the Trainer has counted the step's label tokens, and counts the padding it executes (``padding``:
      real and executed tokens, summed over the run);
    - given ``compute_loss_func=label_token_loss``, asks the model for logits at the label positions only;
    - reports as ``eval_loss`` the token-weighted loss over the whole validation set (``validation``), and
      ``eval_accuracy`` given ``accuracy`` (model -> validation accuracy);
    - resumes an adapter in place, which prompt learning needs.
    """

    def __init__(
        self,
        *args: Any,
        execution: Execution,
        pad_token_id: int,
        penalty_share: PenaltyShare | None = None,
        accuracy: Callable[[PreTrainedModel], float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.accuracy = accuracy
        self.label_logits_only = logits_at_labels_only(self.model)  # as the training loss decides
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

    def padding_fraction(self) -> float | None:
        """The share of executed tokens that were padding, over the run so far; None before any step."""
        executed = self.padding["executed_tokens"]
        return round(1 - self.padding["real_tokens"] / executed, 4) if executed else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        if self.compute_loss_func is label_token_loss:
            inputs = {**inputs, "logits_to_keep": label_positions(inputs["labels"])}
        if self.penalty_share is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # The step's forwards: its micro-batches (fewer in an epoch's last step) on every process.
        share = 1 / (self.current_gradient_accumulation_steps * self.accelerator.num_processes)
        with self.penalty_share(self.model, share):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

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
        model, was_training = self.model, self.model.training
        model.eval()
        with torch.no_grad():
            totals = self._validation_totals(model, shard)
            accuracy = self.accuracy(model) if self.accuracy is not None else None
        model.train(was_training)
        totals = self.accelerator.reduce(totals, reduction="sum")
        metrics = validation_metrics(totals, accuracy, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _validation_totals(self, model: nn.Module, shard: ValidationShard) -> torch.Tensor:
        """This process's [loss, tokens, answer loss, answer tokens, batches without a label token]."""
        batch_size = self.args.per_device_eval_batch_size
        batches = DataLoader(shard, batch_size=batch_size, collate_fn=self.data_collator)
        totals = torch.zeros(5, dtype=torch.float64, device=self.args.device)
        for index, inputs in enumerate(batches):
            inputs = self._prepare_inputs(inputs)
            labels, answer_labels = inputs.pop("labels"), inputs.pop("answer_labels", None)
            # One vocabulary-wide log-softmax serves both: answer tokens are label tokens or, when the labels
            # leave them out, are added as targets here.
            targets = labels if answer_labels is None else torch.where(labels != IGNORE_INDEX, labels, answer_labels)
            with self.compute_loss_context_manager():
                nll = self._token_nll(model, inputs, targets)
            batch_totals = masked_totals(nll, labels)
            totals[:2] += batch_totals
            if answer_labels is not None:
                totals[2:4] += masked_totals(nll, answer_labels)
            totals[4] += int(batch_totals[1] == 0 and index * batch_size < shard.examples)
        return totals

    def _token_nll(self, model: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """``token_nll`` of the targets, from logits at the target positions only where the model can (as the
        training loss): a validation batch as large as the training micro-batch would otherwise hold a
        vocabulary-wide fp32 row, and its log-softmax, for every prompt token."""
        if self.label_logits_only:
            return label_position_nll(model, inputs, targets)
        # Prompt tuning returns logits for its virtual tokens too, before the sequence's own.
        return token_nll(model(**inputs).logits[:, -targets.shape[1] :], targets)
