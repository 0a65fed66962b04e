"""``peftbench bench eval``: beam-4 generation vs log-likelihood scoring, seconds per example on the same examples.

peftbench bench eval                                   # SmolLM2-135M on 32 ARC-Challenge questions
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peftbench.bench.common import bench_device
from peftbench.errors import UserError
from peftbench.models.load import resolve_model_path
from peftbench.runs.records import environment_record


def bench_eval(
    model_name: str, dataset: str, examples: int, batch: int | str, beam_size: int, max_new_tokens: int, data_dir: str,
    out: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """Seconds per example of each way to score the same seeded examples, in one process."""
    from peftbench.data.prompts import build_prompt, eval_prompt_ids, scored_sequences
    from peftbench.data.protocols import HIRA
    from peftbench.data.registry import get_dataset
    from peftbench.data.sources import answer_options, load_test_examples
    from peftbench.evaluate.generate import generate_responses
    from peftbench.evaluate.loglik import score_options, score_options_naive, score_questions
    from peftbench.evaluate.runner import sample_indices
    from peftbench.models.load import load_base_model, load_tokenizer

    path = resolve_model_path(model_name)
    model, tokenizer = load_base_model(path, torch.float32).eval().to(bench_device()), load_tokenizer(path)
    spec = get_dataset(dataset)
    if not spec.has_options:
        raise UserError(
            f"bench eval sets generation against log-likelihood on answer options; {dataset} has none: "
            "--against lm-eval --modes generate compares its generation"
        )
    pool = load_test_examples(dataset, data_dir).examples
    chosen = [pool[i] for i in sample_indices(len(pool), examples, seed=36)]
    prompts = [build_prompt(e, HIRA) for e in chosen]
    prompt_ids = eval_prompt_ids(tokenizer, prompts, HIRA)
    sequences = [
        scored_sequences(tokenizer, p, ids, [spec.response_template.format(answer=o) for o in answer_options(e, spec)],
                         HIRA)
        for e, p, ids in zip(chosen, prompts, prompt_ids, strict=True)
    ]  # fmt: skip

    def loglik(score: Callable) -> Callable[[], Any]:
        pad = tokenizer.pad_token_id
        return lambda: [score(model, pad, len(i), s).best() for i, s in zip(prompt_ids, sequences, strict=True)]

    def generate(shared_prefill: bool) -> Callable[[], Any]:
        return lambda: generate_responses(
            model, tokenizer, prompt_ids, batch, beam_size, max_new_tokens, shared_prefill
        )

    setting = f"beam {beam_size}, {max_new_tokens} new tokens, batch {batch}"
    ways: dict[str, Callable[[], Any]] = {
        f"generate, transformers beam search ({setting})": generate(False),
        f"generate, prompt encoded once ({setting})": generate(True),
        "loglik, each option a full sequence": loglik(score_options_naive),
        "loglik, prompt once + cached options": loglik(score_options),
        f"loglik, {batch} questions per pass": lambda: list(
            score_questions(model, tokenizer, chosen, prompts, spec, HIRA, batch)
        ),
    }
    seconds = {}
    for name, way in ways.items():
        start = time.perf_counter()
        way()
        seconds[name] = time.perf_counter() - start
        print(f"  {name}: {seconds[name]:.1f} s, {seconds[name] / len(chosen):.3f} s/example", flush=True)
    plain_s, generate_s, fast_s = (seconds[k] for k in [*list(ways)[:2], list(ways)[-1]])
    report = {
        "model": model_name, "dataset": dataset, "examples": len(chosen), "device": str(bench_device()),
        "seconds": seconds, "examples_per_s": {k: len(chosen) / v for k, v in seconds.items()},
        "speedup generate plain/prompt-once": plain_s / generate_s,
        "speedup generate/loglik-batched": generate_s / fast_s,
        "speedup generate plain/loglik-batched": plain_s / fast_s,
        "environment": environment_record(),
    }  # fmt: skip
    print(f"  generation: {plain_s / generate_s:.2f}x faster with the prompt encoded once")
    print(f"  loglik (batched) is {generate_s / fast_s:.1f}x faster than our generation, "
          f"{plain_s / fast_s:.1f}x faster than plain beam search, on the same {len(chosen)} examples")  # fmt: skip
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
        print(f"written: {out}")
    return report
