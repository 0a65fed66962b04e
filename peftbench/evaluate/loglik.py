"""Log-likelihood scoring: the model's summed log-probability of each option's response, argmax wins.

Every option's response ("the correct answer is answer2") follows the same prompt and shares most
of its tokens with the others. The fast path runs prompt + shared response tokens once, then scores
only the differing tail of every option in one batch on the repeated KV cache; ``naive`` scores each
option as a full sequence (the reference the fast path is tested against, and the path of prefix and
prompt tuning, which cannot continue from a cache).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from peftbench.data.prompts import eval_prompt_ids, scored_sequences
from peftbench.data.protocols import Protocol
from peftbench.data.registry import DatasetSpec
from peftbench.data.sources import Example, answer_options
from peftbench.evaluate.batching import FittedBatches


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


@torch.inference_mode()
def score_batch(
    model: PreTrainedModel, pad_token_id: int, questions: Sequence[tuple[int, Sequence[list[int]]]]
) -> list[OptionScores]:
    """Scores of several questions, each (prompt length, its options' token sequences), in two passes.

    Pass 1 runs every question's shared prefix once, left-padded so that all end together, with positions
    counted from each question's first real token. Pass 2 scores every option's differing tail in one batch
    on the prefix cache, each row repeating its question's cache.
    """
    if inserts_virtual_tokens(model):
        return [score_options_naive(model, pad_token_id, length, sequences) for length, sequences in questions]
    device = model.device
    shared = [_shared_length(sequences) for _, sequences in questions]
    width = max(shared)
    prefix_ids = torch.tensor(
        [[pad_token_id] * (width - n) + sequences[0][:n] for n, (_, sequences) in zip(shared, questions, strict=True)],
        device=device,
    )
    prefix_mask = torch.tensor([[0] * (width - n) + [1] * n for n in shared], device=device)
    # Logits only where response tokens are predicted: the vocabulary projection of every prompt position
    # would be a fifth of the work on SmolLM2.
    kept = max(1, max(n - length for n, (length, _) in zip(shared, questions, strict=True)) + 1)
    out = model(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=kept,
    )
    # Row q's response tokens in its prefix are the last n - length targets: never a padding position.
    prefix_scores = _token_logprobs(out.logits[:, :-1], prefix_ids[:, width - kept + 1 :])

    owner = [q for q, (_, sequences) in enumerate(questions) for _ in sequences]  # question of each tail row
    tails = [s[n:] for n, (_, sequences) in zip(shared, questions, strict=True) for s in sequences]
    tail_width = max(map(len, tails))
    tail_ids = torch.tensor([t + [pad_token_id] * (tail_width - len(t)) for t in tails], device=device)
    tail_mask = torch.tensor([[1] * len(t) + [0] * (tail_width - len(t)) for t in tails], device=device)
    rows = torch.tensor(owner, device=device)
    # Each tail token's position in its unpadded sequence.
    positions = torch.tensor([shared[q] for q in owner], device=device)[:, None] + torch.arange(
        tail_width, device=device
    )
    cache = out.cache
    cache.reorder_cache(rows)
    tail_logits = model(
        input_ids=tail_ids,
        attention_mask=torch.cat([prefix_mask[rows], tail_mask], dim=1),
        position_ids=positions,
        cache=cache,
    ).logits
    # Tail token j is predicted by the prefix's last position (j = 0) or by tail position j - 1.
    predicting = torch.cat([out.logits[rows, -1:], tail_logits[:, :-1]], dim=1)
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
    batch: int = 1,
) -> Iterator[tuple[list[str], OptionScores]]:
    """Each question's options and their scores, in order: the protocol's evaluation prompt, then each option's
    response tokenized as training tokenizes an answer. ``--eval_mode loglik`` and validation accuracy both
    score so. ``batch`` questions share a pass, grouped by length within windows of 16 batches (scores do not
    depend on the grouping: ``tests/test_loglik.py``)."""
    window = 16 * batch
    batches = FittedBatches(batch)
    questions = zip(examples, prompts, eval_prompt_ids(tokenizer, prompts, protocol), strict=True)
    while chunk := list(itertools.islice(questions, window)):
        options, inputs = [], []
        for example, prompt, ids in chunk:
            options.append(answer_options(example, spec))
            responses = [spec.response_template.format(answer=option) for option in options[-1]]
            inputs.append((len(ids), scored_sequences(tokenizer, prompt, ids, responses, protocol)))
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i][1][0]), reverse=True)
        ordered = [inputs[i] for i in order]
        scored = batches.map(lambda part: score_batch(model, tokenizer.pad_token_id, part), ordered)
        scores = dict(zip(order, scored, strict=True))
        yield from ((options[i], scores[i]) for i in range(len(chunk)))
