"""Evaluation batches that run out of GPU memory are retried smaller, with the same results."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM

from peftbench.data.prompts import build_prompt, eval_prompt_ids
from peftbench.data.protocols import HIRA
from peftbench.data.registry import get_dataset
from peftbench.data.sources import load_test_examples
from peftbench.errors import UserError
from peftbench.evaluate.batching import FittedBatches
from peftbench.evaluate.generate import generate_responses
from peftbench.evaluate.loglik import score_questions
from peftbench.models.load import load_tokenizer


def test_a_batch_out_of_memory_is_retried_at_half_the_size_and_later_batches_keep_it(caplog) -> None:
    sizes = []

    def doubled(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        if len(batch) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return [2 * item for item in batch]

    batches = FittedBatches(8)
    with caplog.at_level(logging.WARNING):
        assert batches.map(doubled, list(range(11))) == [2 * item for item in range(11)]
    assert sizes == [8, 4, 2, 2, 2, 2, 2, 1] and batches.size == 2
    assert "out of GPU memory at 8 per batch; continuing at 4" in caplog.text

    def never_fits(batch: list[int]) -> list[int]:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(UserError, match="one question alone runs out of GPU memory"):  # it cannot be split
        FittedBatches(4).map(never_fits, [1, 2, 3, 4])


@contextmanager
def _memory_for_rows(model: torch.nn.Module, rows: int) -> Iterator[list[int]]:
    """A model whose forward runs out of memory above ``rows`` rows, as a small GPU would; yields the row counts."""
    seen: list[int] = []

    def check(module, args, kwargs) -> None:  # noqa: ANN001
        ids = kwargs.get("input_ids", args[0] if args else None)
        count = len(ids if ids is not None else kwargs["inputs_embeds"])
        seen.append(count)
        if count > rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = model.register_forward_pre_hook(check, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("architecture", ["tiny_neo", "tiny_llama"])
def test_scores_and_generations_out_of_memory_equal_those_that_fit(architecture: str, data_dir: str, request) -> None:
    model_dir = request.getfixturevalue(architecture)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(str(model_dir))
    examples = load_test_examples("arc_easy", data_dir).examples[:9]
    prompts = [build_prompt(example, HIRA) for example in examples]
    spec = get_dataset("arc_easy")
    fitting = list(score_questions(model, tokenizer, examples, prompts, spec, HIRA, batch=2))
    prompt_ids = eval_prompt_ids(tokenizer, prompts, HIRA)
    generated = generate_responses(model, tokenizer, prompt_ids, 2, 3, 5)
    # 4 rows: the prefix pass of 8 questions (one row each; one-token option tails need no second pass) does not fit.
    with _memory_for_rows(model, rows=4) as seen:
        squeezed = list(score_questions(model, tokenizer, examples, prompts, spec, HIRA, batch=8))
        assert max(seen) > 4  # it did run out of memory
        seen.clear()
        assert generate_responses(model, tokenizer, prompt_ids, 8, 3, 5) == generated
        assert max(seen) > 4
    for (options, scores), (fit_options, fit) in zip(squeezed, fitting, strict=True):
        assert options == fit_options and scores.logprobs == pytest.approx(fit.logprobs, abs=1e-4)


def test_auto_doubles_while_it_pays_and_keeps_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seconds per item fall until 4 per batch; 8 and 16 gain nothing: auto settles on 4, and every item is run
    once, in order."""
    import peftbench.evaluate.batching as batching

    seconds_per_item = {1: 1.0, 2: 0.6, 4: 0.5, 8: 0.55, 16: 0.5}
    now, sizes = [0.0], []

    def run(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        now[0] += seconds_per_item[len(batch)] * len(batch)
        return [item * 2 for item in batch]

    monkeypatch.setattr(batching.time, "perf_counter", lambda: now[0])
    batches = FittedBatches("auto")
    items = list(range(80))
    assert batches.map(run, items) == [item * 2 for item in items]
    # Two batches at each size tried until two sizes in a row gain nothing (1 to 16: 62 items), then 4.
    assert sizes == [1, 1, 2, 2, 4, 4, 8, 8, 16, 16] + [4] * 4 + [2] and batches.size == 4


def test_auto_weighs_batches_by_their_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Longer items first (they are sorted) must not make a larger batch look slower: time is per token."""
    import peftbench.evaluate.batching as batching

    now, per_token = [0.0], {1: 1.0, 2: 0.8, 4: 0.6, 8: 0.5, 16: 0.5, 32: 0.5}  # faster up to 8

    def run(batch: list[int]) -> list[int]:
        now[0] += per_token[len(batch)] * sum(batch)
        return batch

    monkeypatch.setattr(batching.time, "perf_counter", lambda: now[0])
    batches = FittedBatches("auto", cost=lambda tokens: tokens)
    batches.map(run, sorted(range(100, 300), reverse=True))
    assert batches.size == 8


def test_auto_judges_a_size_by_its_fastest_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 4 slowed by another process's load once does not make auto settle on 2."""
    timed = {1: [1.0, 1.0], 2: [0.6, 0.6], 4: [0.9, 0.4], 8: [0.5, 0.5]}

    def per_item(size: int) -> float:
        return timed[size].pop(0) if timed.get(size) else 0.4

    assert _auto_size_on_a_fake_clock(monkeypatch, per_item, 80) == 4


def test_auto_is_not_stopped_by_one_size_that_gains_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 per batch measured no faster than 1 (another process's load, or no gain yet): auto still tries 4,
    which is faster, and settles there after 8 and 16 gain nothing."""
    per_item = {1: 1.0, 2: 0.98, 4: 0.7, 8: 0.72, 16: 0.75}
    assert _auto_size_on_a_fake_clock(monkeypatch, per_item.__getitem__, 80) == 4


def test_out_of_memory_mid_search_keeps_the_fastest_size_that_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 per batch fastest, 8 slower, 16 out of memory: the rest run at 4, not at 8."""
    sizes: list[int] = []

    def per_item(size: int) -> float:
        if size > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(size)
        return {1: 1.0, 2: 0.6, 4: 0.5, 8: 0.55}[size]

    assert _auto_size_on_a_fake_clock(monkeypatch, per_item, 50) == 4
    assert sizes[8:] == [4] * 5  # after 1, 1, 2, 2, 4, 4, 8, 8 (30 items)


def _auto_size_on_a_fake_clock(
    monkeypatch: pytest.MonkeyPatch, seconds_per_item: Callable[[int], float], count: int
) -> int:
    """The size ``--batch auto`` settles on over ``count`` items when a batch of n takes n x seconds_per_item(n)
    (which may raise, as running out of memory does)."""
    import peftbench.evaluate.batching as batching

    now = [0.0]

    def run(batch: list[int]) -> list[int]:
        now[0] += seconds_per_item(len(batch)) * len(batch)
        return batch

    monkeypatch.setattr(batching.time, "perf_counter", lambda: now[0])
    batches = FittedBatches("auto")
    assert batches.map(run, list(range(count))) == list(range(count))
    return batches.size
