"""Validation loss that cannot go NaN: summed over every label token of the whole validation set.

The Trainer's own evaluation averages per-batch mean losses. A batch whose labels are all masked has
a mean of 0/0 = NaN, NaN never compares as better, and the best checkpoint is then never chosen,
silently (likely with ``--batch 1`` or ``2`` on long prompts). Here every label token weighs the
same whatever batch it falls in, and a batch without label tokens adds nothing.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import Trainer

from peftbench.data.prompts import IGNORE_INDEX

logger = logging.getLogger(__name__)


def label_loss_totals(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[summed negative log-likelihood of the label tokens, number of label tokens], in float64."""
    predicted, targets = logits[:, :-1].float(), labels[:, 1:]
    total = F.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = (targets != IGNORE_INDEX).sum()
    return torch.stack([total.double(), count.double()])


class TokenWeightedTrainer(Trainer):
    """A Trainer whose ``eval_loss`` is the token-weighted loss over the whole validation set.

    With no label token at all it reports ``eval_loss = inf``: no checkpoint is chosen by it, and the
    run records why (see ``train``).
    """

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:  # noqa: ANN001
        dataloader = self.get_eval_dataloader(eval_dataset)
        model, was_training = self.model, self.model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        empty_batches = 0
        with torch.no_grad():
            for inputs in dataloader:
                inputs = self._prepare_inputs(inputs)
                labels = inputs.pop("labels")
                with self.compute_loss_context_manager():
                    logits = model(**inputs).logits
                batch_totals = label_loss_totals(logits, labels)
                empty_batches += int(batch_totals[1] == 0)
                totals += batch_totals
        model.train(was_training)
        totals = self.accelerator.reduce(totals, reduction="sum")
        tokens = int(totals[1])
        loss = float(totals[0] / tokens) if tokens else float("inf")
        if not tokens:
            logger.warning("validation set has no label tokens: no checkpoint can be chosen by validation loss")
        metrics = {
            f"{metric_key_prefix}_loss": loss,
            f"{metric_key_prefix}_label_tokens": tokens,
            f"{metric_key_prefix}_batches_without_labels": empty_batches,
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
