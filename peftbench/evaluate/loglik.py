"""Log-likelihood scoring: the model's summed log-probability of each option's response, argmax wins.

Every option's response ("the correct answer is answer2") follows the same prompt and shares most
of its tokens with the others. The fast path runs prompt + shared response tokens once, then scores
only the differing tail of every option in one batch on the repeated KV cache; ``naive`` scores each
option as a full sequence (the reference the fast path is tested against, and the path of prefix and
prompt tuning, which cannot continue from a cache).

Where every option differs in its last token only ("answer1" ... "answer4" are one token each in SmolLM2's
and GPT-Neo's vocabularies, as are boolq's "true"/"false"), the prefix pass's last logits already predict
every tail: the second pass, and the copies of the KV cache it needs, are skipped. On SmolLM2-135M (CPU,
ARC-Challenge) that pass and its cache copies were about a third of a batch's time (docs/evaluation.md).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from peftbench.data.prompts import eval_prompt_ids, scored_sequences
from peftbench.data.protocols import Protocol
from peftbench.data.registry import DatasetSpec
from peftbench.data.sources import Example, answer_options
from peftbench.evaluate.batching import AUTO, AUTO_LIMIT, FittedBatches


@dataclass(frozen=True)
class OptionScores:
    logprobs: list[float]  # summed over each option's response tokens
    token_counts: list[int]  # response tokens per option (for length-normalised scores)

    def best(self, normalise: bool = False) -> int:
        scores = [s / n for s, n in zip(self.logprobs, self.token_counts, strict=True)] if normalise else self.logprobs
        return max(range(len(scores)), key=scores.__getitem__)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position, computed in fp32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def inserts_virtual_tokens(model: PreTrainedModel) -> bool:
    """Prefix and prompt tuning: PEFT inserts their virtual tokens on every call, so a pass cannot continue from
    a returned KV cache, and padding would sit between the virtual tokens and the prompt."""
    config = getattr(model, "active_peft_config", None)
    return getattr(config, "is_prompt_learning", False)


def score_options(
    model: PreTrainedModel, pad_token_id: int, prompt_length: int, sequences: Sequence[list[int]]
) -> OptionScores:
    """Each option's summed log-probability of its tokens after the first ``prompt_length`` (the prompt)."""
    return score_batch(model, pad_token_id, [(prompt_length, sequences)])[0]


def _shared_length(sequences: Sequence[list[int]]) -> int:
    """Leading tokens every option shares (prompt and common response words); each option keeps one of its own."""
    shared = 0
    while all(len(s) > shared + 1 for s in sequences) and len({s[shared] for s in sequences}) == 1:
        shared += 1
    return max(shared, 1)


@dataclass(frozen=True)
class Header:
    """The leading tokens every question of a window shares (the template and the task's own preamble: 34 of
    ARC-Challenge's ~130 tokens under hira) and their KV cache, computed once for the window."""

    length: int
    cache: Any


def header_length(questions: Sequence[tuple[int, Sequence[list[int]]]]) -> int:
    """Leading tokens all questions share, short of every prompt's last token (responses stay after it)."""
    first = questions[0][1][0]
    limit = min(length for length, _ in questions) - 1
    shared = 0
    while shared < limit and all(sequences[0][shared] == first[shared] for _, sequences in questions):
        shared += 1
    return shared


@torch.inference_mode()
def encode_header(model: PreTrainedModel, questions: Sequence[tuple[int, Sequence[list[int]]]]) -> Header | None:
    """The window's shared header, encoded once; None where there is none or the model cannot use a cache."""
    length = header_length(questions)
    if length == 0 or inserts_virtual_tokens(model):
        return None
    ids = torch.tensor([questions[0][1][0][:length]], device=model.device)
    return Header(length, model(input_ids=ids, use_cache=True, logits_to_keep=1).cache)


def _attention_window(model: PreTrainedModel) -> int | None:
    """Keys a query may see, counted in places of the row (GPT-Neo's local layers: window_size), or None."""
    config = model.config
    windows = [w for w in (getattr(config, "window_size", None), getattr(config, "sliding_window", None)) if w]
    return min(windows, default=None)


@torch.inference_mode()
def score_batch(
    model: PreTrainedModel,
    pad_token_id: int,
    questions: Sequence[tuple[int, Sequence[list[int]]]],
    header: Header | None = None,
) -> list[OptionScores]:
    """Scores of several questions, each (prompt length, its options' token sequences), in one or two passes.

    Pass 1 runs every question's shared prefix once, left-padded so that all end together, with positions
    counted from each question's first real token; its last logits predict every option's first tail token.
    With a ``header`` it continues from the header's cache (repeated per row), so padding sits between the
    header and the rest: positions come from the mask, and a model whose attention window is counted in
    places of the row gets the header only where the whole row fits its window. Pass 2, only where some tail
    is longer than one token, scores the rest of every option's tail in one batch on the prefix cache, each
    row repeating its question's cache.
    """
    if inserts_virtual_tokens(model):
        return [score_options_naive(model, pad_token_id, length, sequences) for length, sequences in questions]
    device = model.device
    start = header.length if header is not None else 0
    shared = [_shared_length(sequences) for _, sequences in questions]
    rest = [n - start for n in shared]  # each row's tokens in pass 1
    width = max(rest)
    owner = [q for q, (_, sequences) in enumerate(questions) for _ in sequences]  # question of each tail row
    tails = [s[n:] for n, (_, sequences) in zip(shared, questions, strict=True) for s in sequences]
    tail_width = max(map(len, tails))
    window = _attention_window(model)
    if header is not None and window is not None and start + width + tail_width > window:
        return score_batch(model, pad_token_id, questions)
    prefix_ids = torch.tensor(
        [
            [pad_token_id] * (width - n) + sequences[0][start : start + n]
            for n, (_, sequences) in zip(rest, questions, strict=True)
        ],
        device=device,
    )
    prefix_mask = torch.tensor([[1] * start + [0] * (width - n) + [1] * n for n in rest], device=device)
    cache = None
    if header is not None:
        cache = copy.deepcopy(header.cache)  # the window's other batches continue from it too
        cache.batch_repeat_interleave(len(questions))
    # Logits only where response tokens are predicted: the vocabulary projection of every prompt position
    # would be a fifth of the work on SmolLM2.
    kept = max(1, max(n - length for n, (length, _) in zip(shared, questions, strict=True)) + 1)
    out = model(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0)[:, start:],
        cache=cache,
        use_cache=header is not None or tail_width > 1,  # one-token tails need no cache of their own
        logits_to_keep=kept,
    )
    # Row q's response tokens in its prefix are the last n - length targets: never a padding position.
    prefix_scores = _token_logprobs(out.logits[:, :-1], prefix_ids[:, width - kept + 1 :])

    tail_ids = torch.tensor([t + [pad_token_id] * (tail_width - len(t)) for t in tails], device=device)
    tail_mask = torch.tensor([[1] * len(t) + [0] * (tail_width - len(t)) for t in tails], device=device)
    rows = torch.tensor(owner, device=device)
    # Each tail token's position in its unpadded sequence.
    positions = torch.tensor([shared[q] for q in owner], device=device)[:, None] + torch.arange(
        tail_width, device=device
    )
    # Tail token j is predicted by the prefix's last position (j = 0) or by tail position j - 1.
    predicting = out.logits[rows, -1:]
    if tail_width > 1:
        cache = out.cache
        cache.reorder_cache(rows)
        tail_logits = model(
            input_ids=tail_ids[:, :-1],  # the last tail token predicts nothing that is scored
            attention_mask=torch.cat([prefix_mask[rows], tail_mask[:, :-1]], dim=1),
            position_ids=positions[:, :-1],
            cache=cache,
        ).logits
        predicting = torch.cat([predicting, tail_logits], dim=1)
    lengths = torch.tensor([questions[q][0] for q in owner], device=device)
    scored = tail_mask.bool() & (positions >= lengths[:, None])
    tail_scores = torch.where(scored, _token_logprobs(predicting, tail_ids), 0.0).sum(-1).tolist()

    results, row = [], 0
    for q, (length, sequences) in enumerate(questions):
        # Response tokens inside the shared prefix: those after the prompt (the last n - length positions).
        in_prefix = (
            float(prefix_scores[q, prefix_scores.shape[1] - (shared[q] - length) :].sum())
            if shared[q] > length
            else 0.0
        )
        logprobs = [in_prefix + tail_scores[row + i] for i in range(len(sequences))]
        results.append(OptionScores(logprobs, [len(s) - length for s in sequences]))
        row += len(sequences)
    return results


@torch.inference_mode()
def score_options_naive(
    model: PreTrainedModel, pad_token_id: int, prompt_length: int, sequences: Sequence[list[int]]
) -> OptionScores:
    logprobs = []
    for sequence in sequences:
        ids = torch.tensor([sequence], device=model.device)
        logits = model(input_ids=ids).logits[0, -ids.shape[1] :]  # without prompt tuning's virtual tokens
        logprobs.append(float(_token_logprobs(logits[prompt_length - 1 : -1], ids[0, prompt_length:]).sum()))
    return OptionScores(logprobs, [len(s) - prompt_length for s in sequences])


def score_questions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    prompts: Sequence[str],
    spec: DatasetSpec,
    protocol: Protocol,
    batch: int | str = 1,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[list[str], OptionScores]]:
    """Each question's options and their scores, in order: the protocol's evaluation prompt, then each option's
    response tokenized as training tokenizes an answer. ``--eval_mode loglik`` and validation accuracy both
    score so. ``batch`` questions (``"auto"``: measured, ``evaluate/batching.py``) share a pass, grouped by
    length within windows of 16 batches (scores do not depend on the grouping: ``tests/evaluate/test_loglik.py``);
    ``progress`` is told the number of questions of each batch as it ends."""
    window = 16 * (AUTO_LIMIT if batch == AUTO else int(batch))
    header: Header | None = None
    # A question's work is its tokens after the header, which is encoded once per window: counting the header
    # too would make the later, shorter questions (and so the larger sizes auto tries later) look cheaper.
    batches = FittedBatches(batch, cost=lambda question: len(question[1][0]) - (header.length if header else 0))
    questions = zip(examples, prompts, eval_prompt_ids(tokenizer, prompts, protocol), strict=True)

    def run(part: list[tuple[int, list[list[int]]]]) -> list[OptionScores]:
        scores = score_batch(model, tokenizer.pad_token_id, part, header)
        if progress is not None:
            progress(len(part))
        return scores

    while chunk := list(itertools.islice(questions, window)):
        options, inputs = [], []
        for example, prompt, ids in chunk:
            options.append(answer_options(example, spec))
            responses = [spec.response_template.format(answer=option) for option in options[-1]]
            inputs.append((len(ids), scored_sequences(tokenizer, prompt, ids, responses, protocol)))
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i][1][0]), reverse=True)
        header = encode_header(model, inputs)
        scores = dict(zip(order, batches.map(run, [inputs[i] for i in order]), strict=True))
        yield from ((options[i], scores[i]) for i in range(len(chunk)))
