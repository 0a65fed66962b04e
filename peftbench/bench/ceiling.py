"""The most any exact scorer could do on this machine: how fast log-likelihood evaluation could possibly be.

An exact fp32 scorer must still run every question's own tokens through the model: the tokens after the header all
questions share (which can be encoded once) up to each option's last token, each prefix once, and the output layer
wherever an option's token is scored. Counting those products (2 per weight per token; attention's own products,
small at these lengths, left out, so the ceiling errs high) and dividing the machine's measured fp32 matrix-multiply
rate by them gives questions per second no exact implementation can pass. ``peftbench bench eval --against
lm-eval`` prints it beside both harnesses' rates, so a target above it is seen to be out of reach, not guessed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peftbench.evaluate.loglik import header_length


@dataclass(frozen=True)
class Ceiling:
    matmul_gflops: float  # the device's measured fp32 rate on the model's own MLP shapes, the fastest
    gflop_per_question: float  # the least an exact scorer computes per question, on average
    questions_per_s: float


def least_work(options: Sequence[list[int]], prompt_length: int, header: int) -> tuple[int, int]:
    """(tokens that must go through the model, positions whose output-layer row must be computed) for a question:
    each distinct prefix once, after the header; the final token of an option is scored, never run."""
    forwarded = {tuple(s[:k]) for s in options for k in range(header + 1, len(s))}
    scored = {tuple(s[:k]) for s in options for k in range(prompt_length, len(s))}
    return len(forwarded), len(scored)


def measured_matmul_gflops(rows: int, inner: int, outer: int, device: torch.device, repeats: int = 30) -> float:
    """The best of ``repeats`` timings of one (rows x inner) @ (inner x outer) fp32 product on ``device``, in
    GFLOP/s. A GPU runs products asynchronously: each timing waits for its product to end."""
    left, right = torch.randn(rows, inner, device=device), torch.randn(inner, outer, device=device)
    finish = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    left @ right  # the first call sets up the kernel
    best = float("inf")
    for _ in range(repeats):
        finish()
        start = time.perf_counter()
        left @ right
        finish()
        best = min(best, time.perf_counter() - start)
    return 2 * rows * inner * outer / best / 1e9


def exact_ceiling(
    model: torch.nn.Module, sequences: Sequence[Sequence[list[int]]], prompt_lengths: Sequence[int]
) -> Ceiling:
    embedding = model.get_input_embeddings().weight
    vocabulary, hidden = embedding.shape
    output_weights = vocabulary * hidden
    body = sum(p.numel() for p in model.parameters()) - embedding.numel()
    tied = model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
    body -= 0 if tied else output_weights  # the output layer is counted per scored position, not per token
    header = header_length(list(zip(prompt_lengths, sequences, strict=True)))  # the one our scorer encodes once
    work = [least_work(q, n, header) for q, n in zip(sequences, prompt_lengths, strict=True)]
    flop = sum(2 * body * tokens + 2 * output_weights * scored for tokens, scored in work) / len(work)
    tokens_per_question = max(1, sum(tokens for tokens, _ in work) // len(work))
    inner = getattr(model.config, "intermediate_size", None) or 4 * hidden  # GPT-Neo's is None: 4 x hidden
    # The fastest of the MLP's two shapes at 4, 16 and 64 questions' rows (a CPU peaks at a few hundred rows, a
    # GPU at thousands): a ceiling should err high.
    shapes = [(tokens_per_question * n, *mlp) for n in (4, 16, 64) for mlp in ((hidden, inner), (inner, hidden))]
    rate = max(measured_matmul_gflops(*shape, device=embedding.device) for shape in shapes)
    return Ceiling(rate, flop / 1e9, rate * 1e9 / flop)
