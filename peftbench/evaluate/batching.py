"""Evaluation batches that shrink when the GPU runs out of memory.

A ``--batch`` large enough to fill one GPU does not fit a smaller one, and beam search's memory grows with
the prompt lengths, which are sorted: the longest batches come last, often hours in. Rather than failing
there, a batch that runs out of memory is retried at half the size, and every later batch keeps the smaller
size. Scores and generations do not depend on the batch size (``tests/test_loglik.py``,
``tests/test_evaluate.py``), so neither does any result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from peftbench.errors import UserError

logger = logging.getLogger(__name__)
Item = TypeVar("Item")
Result = TypeVar("Result")


class FittedBatches:
    """Runs items in consecutive batches of at most ``size`` that fit in memory; ``size`` keeps the last that did."""

    def __init__(self, size: int) -> None:
        self.size = size

    def map(self, run: Callable[[list[Item]], list[Result]], items: Sequence[Item]) -> list[Result]:
        """``run`` over batches of ``items``, its results concatenated in the items' order."""
        results: list[Result] = []
        start = 0
        while start < len(items):
            batch = list(items[start : start + self.size])
            outputs = _attempt(run, batch)
            if outputs is None:
                self.size = len(batch) // 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                logger.warning("out of GPU memory at %d per batch; continuing at %d", len(batch), self.size)
                continue
            results.extend(outputs)
            start += len(batch)
        return results


def _attempt(run: Callable[[list[Item]], list[Result]], batch: list[Item]) -> list[Result] | None:
    """``run(batch)``, or None if it ran out of memory: returning frees the failed attempt's tensors, which the
    exception's traceback would otherwise hold during the retry. One item that does not fit is the user's error."""
    try:
        return run(batch)
    except torch.OutOfMemoryError as exc:
        if len(batch) == 1:
            raise UserError(
                "one question alone runs out of GPU memory; use a smaller --beam_size or --max_new_tokens, or a "
                "GPU with more memory"
            ) from exc
        return None
