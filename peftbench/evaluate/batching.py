"""Evaluation batches that shrink when the GPU runs out of memory.

A ``--batch`` large enough to fill one GPU does not fit a smaller one, and beam search's memory grows with
the prompt lengths, which are sorted: the longest batches come last, often hours in. Rather than failing
there, a batch that runs out of memory is retried at half the size, and every later batch keeps the smaller
size. Scores and generations do not depend on the batch size (``tests/evaluate/test_loglik.py``,
``tests/evaluate/test_batching.py``), so neither does any result.

``--batch auto`` measures instead of guessing: on CPU a larger batch is not free (its padding, attention
masks and activations outgrow the caches, and two cores are already busy with one question), on a GPU it
is, until memory runs out. So the first batches, which are real work whose results are kept, double in size
from 1 until ``PATIENCE`` sizes in a row are not faster per token than the fastest so far by ``GAIN``, up to
``AUTO_LIMIT``; the fastest is kept for the rest (out of memory on the way still halves it). Each size is
timed on ``SAMPLES`` batches and judged by its fastest, so a moment of another process's load on a shared
machine does not decide it. Only the speed depends on the choice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from peftbench.errors import UserError

logger = logging.getLogger(__name__)
Item = TypeVar("Item")
Result = TypeVar("Result")
AUTO = "auto"
AUTO_LIMIT = 64  # questions per batch --batch auto tries at most
GAIN = 0.05  # a size must be this much faster per token than the best so far to become the best
SAMPLES = 2  # batches timed at each size
PATIENCE = 2  # sizes in a row that gain nothing before auto stops doubling: one noisy size does not end the search


class FittedBatches:
    """Runs items in consecutive batches of at most ``size`` that fit in memory; ``size`` keeps the last that did.

    ``size`` ``"auto"``: measured on the first batches, weighing each item by ``cost`` (its tokens)."""

    def __init__(self, size: int | str, cost: Callable[[Item], int] = lambda _: 1) -> None:
        self.size = 1 if size == AUTO else int(size)
        self.measuring, self.cost = size == AUTO, cost
        self.best: tuple[float, int] | None = None  # (seconds per token, size) of the fastest measured
        self.samples: list[float] = []  # seconds per token of the batches at the size being measured
        self.misses = 0  # sizes in a row measured no faster than the best

    def map(self, run: Callable[[list[Item]], list[Result]], items: Sequence[Item]) -> list[Result]:
        """``run`` over batches of ``items``, its results concatenated in the items' order."""
        results: list[Result] = []
        start = 0
        while start < len(items):
            batch = list(items[start : start + self.size])
            began = time.perf_counter()
            outputs = _attempt(run, batch)
            if outputs is None:
                self.size = len(batch) // 2
                if self.measuring and self.best is not None:  # never a size measured slower than the best that fit
                    self.size = min(self.size, self.best[1])
                self.measuring = False
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                logger.warning("out of GPU memory at %d per batch; continuing at %d", len(batch), self.size)
                continue
            if self.measuring and len(batch) == self.size:  # a short last batch measures nothing
                self._measured(len(batch), (time.perf_counter() - began) / max(1, sum(map(self.cost, batch))))
            results.extend(outputs)
            start += len(batch)
        if self.measuring and self.best is not None:
            logger.info("--batch auto: the items ended mid-search; fastest so far %d per batch", self.best[1])
        return results

    def _measured(self, size: int, per_token: float) -> None:
        """Doubles the size until it stops paying; settles on the fastest size measured."""
        self.samples.append(per_token)
        if len(self.samples) < SAMPLES:
            return
        per_token, self.samples = min(self.samples), []
        if self.best is None or per_token < self.best[0] * (1 - GAIN):
            self.best, self.misses = (per_token, size), 0
        else:
            self.misses += 1
        if self.misses < PATIENCE and size * 2 <= AUTO_LIMIT:
            self.size = size * 2
            return
        self.size, self.measuring = self.best[1], False
        logger.info("--batch auto: %d per batch (%.2f ms per token measured)", self.size, self.best[0] * 1e3)


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
