"""Log-likelihood scoring: the model's summed log-probability of each option's response, argmax wins.

Every option's response ("the correct answer is answer2") follows the same prompt and shares most
of its tokens with the others. The fast path runs prompt + shared response tokens once, then scores
only the differing tail of every option in one batch on the repeated KV cache; ``naive`` scores each
option as a full sequence (the reference the fast path is tested against, and the path of prefix and
prompt tuning, which cannot continue from a cache).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from peftbench.data.prompts import eval_prompt_ids, scored_sequences
from peftbench.data.registry import DatasetSpec
from peftbench.data.sources import Example, answer_options
from peftbench.protocols import Protocol


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


@torch.inference_mode()
def score_options(
    model: PreTrainedModel, pad_token_id: int, prompt_length: int, sequences: Sequence[list[int]]
) -> OptionScores:
    """Each option's summed log-probability of its tokens after the first ``prompt_length`` (the prompt)."""
    if inserts_virtual_tokens(model):
        return score_options_naive(model, pad_token_id, prompt_length, sequences)
    shared = 0
    while all(len(s) > shared + 1 for s in sequences) and len({s[shared] for s in sequences}) == 1:
        shared += 1  # every option keeps at least one token of its own
    shared = max(shared, 1)
    device = model.device

    prefix = torch.tensor([sequences[0][:shared]], device=device)
    # Logits only where response tokens are predicted: the vocabulary projection of every prompt position
    # would be a fifth of the work on SmolLM2.
    kept = shared - prompt_length + 1
    out = model(input_ids=prefix, use_cache=True, logits_to_keep=kept)
    shared_score = _token_logprobs(out.logits[0, :-1], prefix[0, prompt_length:shared]).sum()

    tails = [s[shared:] for s in sequences]
    width = max(map(len, tails))
    pad = pad_token_id
    tail_ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=device)
    mask = torch.tensor([[1] * (shared + len(t)) + [0] * (width - len(t)) for t in tails], device=device)
    cache = out.cache
    cache.batch_repeat_interleave(len(tails))
    tail_logits = model(input_ids=tail_ids, attention_mask=mask, cache=cache).logits
    # Tail token j is predicted by the prefix's last position (j = 0) or by tail position j - 1.
    predicting = torch.cat([out.logits[:, -1:].expand(len(tails), 1, -1), tail_logits[:, :-1]], dim=1)
    tail_scores = _token_logprobs(predicting, tail_ids)
    logprobs = [float(shared_score + tail_scores[i, : len(t)].sum()) for i, t in enumerate(tails)]
    return OptionScores(logprobs, [len(s) - prompt_length for s in sequences])


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
) -> Iterator[tuple[list[str], OptionScores]]:
    """Each question's options and their scores: the protocol's evaluation prompt, then each option's response
    tokenized as training tokenizes an answer. ``--eval_mode loglik`` and validation accuracy both score so."""
    for example, prompt, ids in zip(examples, prompts, eval_prompt_ids(tokenizer, prompts, protocol), strict=True):
        options = answer_options(example, spec)
        responses = [spec.response_template.format(answer=option) for option in options]
        sequences = scored_sequences(tokenizer, prompt, ids, responses, protocol)
        yield options, score_options(model, tokenizer.pad_token_id, len(ids), sequences)
