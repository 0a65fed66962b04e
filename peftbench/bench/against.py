"""``peftbench bench eval --against lm-eval``: our evaluation and lm-evaluation-harness on the same requests.

peftbench bench eval --against lm-eval                    # 200 ARC-Challenge questions, SmolLM2-135M, fp32
peftbench bench eval --against lm-eval --dataset gsm8k --modes generate   # GSM8K: 200 new tokens, beam 4
pip install 'peftbench[bench]'                             # lm-eval is an extra of the benchmark only

Both score the same token sequences: every option becomes lm-eval's request (context = BOS + our prompt,
continuation = the option's response) with our tokens, passed to ``HFLM._loglikelihood_tokens``, the
token-level entry its ``loglikelihood`` ends in, so neither tokenizer's choices decide the comparison. Rounds
alternate which one runs first (the machine may be shared) and the medians are reported, with how many
choices agree and the largest log-probability difference. Generation compares beam search with the same
decoding (``num_beams``, ``max_gen_toks`` = our ``max_new_tokens``, greedy, EOS as lm-eval's stop string), in
the protocol's variant for the dataset's task (GSM8K: 200 new tokens), counts the same texts and, for math, the
same extracted answers, and checks our batched text against one prompt at a time.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from peftbench.bench.ceiling import exact_ceiling
from peftbench.errors import UserError


@dataclass(frozen=True)
class Questions:
    """The seeded questions both harnesses score, as our scorer and as lm-eval's requests see them."""

    examples: list[dict]
    prompts: list[str]
    prompt_ids: list[list[int]]
    sequences: list[list[list[int]]]  # per question, prompt + each option's response


def load_lm_eval(model: torch.nn.Module, tokenizer: Any, batch: int) -> Any:
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise UserError("--against lm-eval needs lm-evaluation-harness: pip install 'peftbench[bench]'") from exc
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch)


def loglik_requests(tokenizer: Any, questions: Questions) -> list[tuple[tuple[str, str], list[int], list[int]]]:
    """One lm-eval request per option: ((context, continuation), context tokens, continuation tokens)."""
    requests = []
    for ids, sequences in zip(questions.prompt_ids, questions.sequences, strict=True):
        context = tokenizer.decode(ids)
        requests += [((context, tokenizer.decode(s[len(ids) :])), ids, s[len(ids) :]) for s in sequences]
    return requests


def per_question(values: list[float], questions: Questions) -> list[list[float]]:
    """lm-eval's flat per-option results, regrouped per question."""
    grouped, start = [], 0
    for sequences in questions.sequences:
        grouped.append(values[start : start + len(sequences)])
        start += len(sequences)
    return grouped


def agreement(ours: list[list[float]], theirs: list[list[float]]) -> dict[str, float]:
    """Same choice (argmax) on how many questions, and the largest difference of any option's log-probability."""
    choose = lambda scores: max(range(len(scores)), key=scores.__getitem__)  # noqa: E731
    same = sum(choose(a) == choose(b) for a, b in zip(ours, theirs, strict=True))
    largest = max(abs(x - y) for a, b in zip(ours, theirs, strict=True) for x, y in zip(a, b, strict=True))
    return {"same_choice": same, "questions": len(ours), "max_abs_logprob_diff": largest}


def side_by_side(ways: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of each way per round, the order alternating between rounds; the outputs of the last round."""
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    outputs: dict[str, Any] = {}
    for index in range(rounds):
        names = list(ways) if index % 2 == 0 else list(reversed(ways))
        for name in names:
            start = time.perf_counter()
            outputs[name] = ways[name]()
            seconds[name].append(time.perf_counter() - start)
        print("  round", index + 1, ", ".join(f"{n}: {seconds[n][-1]:.1f} s" for n in ways), flush=True)
    return seconds, outputs


def rates(seconds: dict[str, list[float]], count: int, ours: str, theirs: str) -> dict[str, Any]:
    """Median questions per second of each, and the ratio of the medians and of each round's pair."""
    per_s = {name: count / statistics.median(values) for name, values in seconds.items()}
    pairs = [b / a for a, b in zip(seconds[ours], seconds[theirs], strict=True)]
    return {"questions_per_s": per_s, "ratio": per_s[ours] / per_s[theirs], "ratio_per_round": pairs}


def bench_loglik(model: Any, tokenizer: Any, lm: Any, questions: Questions, settings: Any) -> dict[str, Any]:
    from peftbench.evaluate.loglik import score_questions

    spec, protocol = question_protocol(settings.dataset)
    if not spec.has_options:
        raise UserError(f"{spec.name} has no answer options to score by log-likelihood: --modes generate")
    requests = loglik_requests(tokenizer, questions)
    ways = {
        f"peftbench loglik (--batch {settings.batch})": lambda: [
            s.logprobs
            for _, s in score_questions(
                model, tokenizer, questions.examples, questions.prompts, spec, protocol, settings.batch
            )
        ],
        f"lm-eval HFLM (batch {settings.lm_eval_batch})": lambda: per_question(
            [logprob for logprob, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)], questions
        ),
    }
    seconds, outputs = side_by_side(ways, settings.rounds)
    ours, theirs = ways
    report = rates(seconds, len(questions.examples), ours, theirs) | {
        "seconds": seconds,
        "requests": len(requests),
        "agreement": agreement(outputs[ours], outputs[theirs]),
    }
    ceiling = exact_ceiling(model, questions.sequences, [len(ids) for ids in questions.prompt_ids])
    speeds = report["questions_per_s"]
    report["ceiling"] = asdict(ceiling) | {"times_lm_eval": ceiling.questions_per_s / speeds[theirs],
                                           "peftbench_share": speeds[ours] / ceiling.questions_per_s}  # fmt: skip
    _print(report, "log-likelihood", len(questions.examples))
    return report


def bench_generate(model: Any, tokenizer: Any, lm: Any, questions: Questions, settings: Any) -> dict[str, Any]:
    from lm_eval.api.instance import Instance

    from peftbench.evaluate.generate import generate_responses

    spec, protocol = question_protocol(settings.dataset)
    count = min(settings.generate_questions, len(questions.prompts))
    beams, new_tokens = decoding_of(settings, protocol)
    # The protocol's further settings (ConvAI2's length penalty and n-gram block) go to both, as generate() takes them.
    decoding = {"until": [tokenizer.eos_token], "max_gen_toks": new_tokens, "num_beams": beams, "do_sample": False,
                **protocol.generation}  # fmt: skip
    requests = [
        Instance("generate_until", {}, (tokenizer.decode(ids), decoding), index)
        for index, ids in enumerate(questions.prompt_ids[:count])
    ]
    prompts = questions.prompt_ids[:count]
    ways = {
        f"peftbench generate (--batch {settings.batch})": lambda: generate_responses(
            model, tokenizer, prompts, settings.batch, beams, new_tokens, generation=protocol.generation
        ),
        f"lm-eval generate_until (batch {settings.lm_eval_batch})": lambda: lm.generate_until(
            requests, disable_tqdm=True
        ),
    }
    seconds, outputs = side_by_side(ways, settings.rounds)
    ours, theirs = ways
    one_by_one = generate_responses(model, tokenizer, prompts, 1, beams, new_tokens, generation=protocol.generation)
    same = sum(a.strip() == b.strip() for a, b in zip(outputs[ours], outputs[theirs], strict=True))
    report = rates(seconds, count, ours, theirs) | {
        "seconds": seconds, "same_text": same, "questions": count, "beam_size": beams, "max_new_tokens": new_tokens,
        "same_text_as_batch_1": sum(a == b for a, b in zip(outputs[ours], one_by_one, strict=True)),
    }  # fmt: skip
    if spec.answer_kind != "text" and spec.answer_kind in protocol.scorers and not spec.has_options:
        report["same_answer"] = same_answers(spec, protocol, questions.examples[:count], outputs[ours], outputs[theirs])
    _print(report, "generation", count)
    return report


def decoding_of(settings: Any, protocol: Any) -> tuple[int, int]:
    """(beams, new tokens): the flags where given, else the protocol's (hira: 16 new tokens; GSM8K 200)."""
    beams = settings.beam_size or protocol.eval_defaults["beam_size"]
    return beams, settings.max_new_tokens or protocol.eval_defaults["max_new_tokens"]


def same_answers(spec: Any, protocol: Any, examples: list[dict], ours: list[str], theirs: list[str]) -> int:
    """How many questions get the same extracted answer from both texts, by the protocol's official scorer."""
    from peftbench.evaluate.scoring import answer_scorer

    score = answer_scorer(spec, protocol.scorers[spec.answer_kind])
    return sum(score(a, e)[0] == score(b, e)[0] for a, b, e in zip(ours, theirs, examples, strict=True))


def _print(report: dict[str, Any], what: str, count: int) -> None:
    for name, rate in report["questions_per_s"].items():
        print(f"  {what}, {name}: {rate:.2f} questions/s (median)")
    rounds = ", ".join(f"{r:.2f}" for r in report["ratio_per_round"])
    print(f"  {what}: peftbench is {report['ratio']:.2f}x lm-eval's speed on the same {count} questions "
          f"(per round: {rounds})")  # fmt: skip
    if "ceiling" in report:
        c = report["ceiling"]
        print(f"  ceiling: an exact fp32 scorer running only each question's own tokens ({c['gflop_per_question']:.1f} "
              f"GFLOP) at this machine's measured matrix-multiply rate ({c['matmul_gflops']:.0f} GFLOP/s) would "
              f"answer {c['questions_per_s']:.1f} questions/s: {c['times_lm_eval']:.2f}x lm-eval's speed; peftbench "
              f"reaches {c['peftbench_share']:.0%} of it")  # fmt: skip
    if "agreement" in report:
        a = report["agreement"]
        print(f"  agreement: same choice on {a['same_choice']}/{a['questions']} questions, largest log-prob "
              f"difference {a['max_abs_logprob_diff']:.2e}")  # fmt: skip
    else:
        print(f"  agreement: the same text on {report['same_text']}/{report['questions']} questions"
              + (f", the same extracted answer on {report['same_answer']}" if "same_answer" in report else "")
              + f"; our batched text equals batch 1's on {report['same_text_as_batch_1']}")  # fmt: skip


@dataclass(frozen=True)
class AgainstBench:
    """``bench eval --against lm-eval``'s settings."""

    model: str = "smollm2-135m"
    dataset: str = "arc_challenge"
    examples: int = 200  # seeded questions both score
    batch: str = "auto"  # ours, as --batch
    lm_eval_batch: int = 4  # lm-eval's fastest of 4 and 16 on a 2-core CPU (issue #30)
    beam_size: int | None = None  # None: the protocol's (hira: 4)
    max_new_tokens: int | None = None  # None: the protocol's (hira: 16 commonsense, 200 math, 32 dialogue)
    rounds: int = 3  # each way runs this many times, alternating; medians are reported
    generate_questions: int = 16  # beam search is slow on a CPU: fewer questions for the generation comparison
    modes: tuple[str, ...] = ("loglik", "generate")
    data_dir: str = ""


def load_questions(tokenizer: Any, settings: AgainstBench) -> Questions:
    """The seeded questions in the hira protocol's variant for the dataset's task (GSM8K: the prompt cut at 155
    tokens); options to score only where the dataset has them."""
    from peftbench.data.prompts import build_prompt, eval_prompt_ids, scored_sequences
    from peftbench.data.sources import answer_options, load_test_examples
    from peftbench.evaluate.runner import sample_indices

    spec, protocol = question_protocol(settings.dataset)
    pool = load_test_examples(settings.dataset, settings.data_dir).examples
    examples = [pool[i] for i in sample_indices(len(pool), settings.examples, seed=36)]
    prompts = [build_prompt(e, protocol) for e in examples]
    prompt_ids = eval_prompt_ids(tokenizer, prompts, protocol)
    options = [answer_options(e, spec) if spec.has_options else [] for e in examples]
    responses = [[spec.response_template.format(answer=o) for o in found] for found in options]
    sequences = [
        scored_sequences(tokenizer, p, ids, r, protocol) if r else []
        for p, ids, r in zip(prompts, prompt_ids, responses, strict=True)
    ]
    return Questions(examples, prompts, prompt_ids, sequences)


def question_protocol(dataset: str) -> tuple[Any, Any]:
    """(the dataset's entry, the hira protocol's variant for its task)."""
    from peftbench.data.protocols import get_protocol
    from peftbench.data.registry import get_dataset

    spec = get_dataset(dataset)
    return spec, get_protocol("hira", spec.task)


def bench_against(settings: AgainstBench, out: Path | None) -> dict[str, Any]:
    """Questions per second of peftbench and lm-eval on the same questions, model and machine, side by side."""
    from importlib.metadata import version

    from peftbench.bench.common import bench_device
    from peftbench.models.load import load_base_model, load_tokenizer, resolve_model_path
    from peftbench.runs.records import environment_record

    path = resolve_model_path(settings.model)
    model, tokenizer = load_base_model(path, torch.float32).eval().to(bench_device()), load_tokenizer(path)
    lm = load_lm_eval(model, tokenizer, settings.lm_eval_batch)
    questions = load_questions(tokenizer, settings)
    report: dict[str, Any] = {
        "settings": asdict(settings), "device": str(bench_device()), "threads": torch.get_num_threads(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "lm_eval": version("lm_eval"),
        "environment": environment_record(),
    }  # fmt: skip
    print(f"{settings.model} (fp32) on {len(questions.examples)} {settings.dataset} questions, {report['device']} "
          f"({report['threads']} threads), lm-eval {report['lm_eval']}", flush=True)  # fmt: skip
    with torch.inference_mode():  # both alike: lm-eval's own calls run under no_grad only
        # Whichever ran first would otherwise pay for the kernels' first-call setup.
        model(input_ids=torch.tensor([questions.prompt_ids[0]], device=model.device))
        if "loglik" in settings.modes:
            report["loglik"] = bench_loglik(model, tokenizer, lm, questions, settings)
        if "generate" in settings.modes:
            report["generate"] = bench_generate(model, tokenizer, lm, questions, settings)
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
        print(f"written: {out}")
    return report
