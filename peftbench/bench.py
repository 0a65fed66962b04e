"""Benchmarks that print ratios measured side by side in one run (never timed tests: machines are noisy).

    peftbench bench train                                  # GPT-Neo-1.3B geometry (6 layers) and SmolLM2-135M
    peftbench bench train --models neo-6l --repeats 7 --out bench_train.json
    peftbench bench train --models neo-1.3b --dtype bf16   # on a GPU: the full 24-layer model in bf16
    peftbench bench eval                                   # beam-4 generation vs log-likelihood scoring
    peftbench bench tokenize                               # a 170k replicate of the local mix: first and cached

Step time is forward + backward + optimizer step, alternating methods repetition by repetition in
one process (the frozen base weights are shared), after warm-up, reported as medians. Peak memory is
measured in a fresh process per method over two training steps, model weights included: on CPU the
resident-set high-water mark reset after construction (Linux), on GPU the max allocated.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPTNeoConfig, PretrainedConfig, PreTrainedModel

from peftbench.config import BenchSettings, RunConfig
from peftbench.errors import UserError
from peftbench.kernels import use_efficient_kernels
from peftbench.methods import METHODS, hira
from peftbench.methods.common import AdapterSettings
from peftbench.models import resolve_model_path
from peftbench.runs import environment_record


def _gpt_neo(layers: int) -> GPTNeoConfig:
    """GPT-Neo-1.3B's geometry: hidden 2048, 16 heads, vocab 50257, alternating global/local attention."""
    return GPTNeoConfig(
        vocab_size=50257,
        hidden_size=2048,
        num_layers=layers,
        num_heads=16,
        attention_types=[[["global", "local"], layers // 2]],
        max_position_embeddings=2048,
        window_size=256,
    )


BENCH_MODELS: dict[str, Callable[[], PretrainedConfig]] = {
    "neo-6l": lambda: _gpt_neo(6),
    "neo-1.3b": lambda: _gpt_neo(24),
    "smollm2-135m": lambda: AutoConfig.from_pretrained(resolve_model_path("smollm2-135m")),
}

# Bench variants beyond the registry's methods: -> (the method whose settings it takes, how to build it).
EXTRA_VARIANTS: dict[str, tuple[str, Callable[[PreTrainedModel, AdapterSettings], nn.Module]]] = {
    "hira-keep": ("hira", lambda model, s: METHODS["hira"].apply(model, dataclasses.replace(s, keep_product=True))),
    "peft-hira": ("hira", lambda model, s: get_peft_model(model, hira.peft_config(model, s))),
}
VARIANTS = {name: (name, method.apply) for name, method in METHODS.items()} | EXTRA_VARIANTS
BENCH_TOTAL_STEPS = 1000  # AdaLoRA's schedule: its rank allocation runs (warm-up phase) but prunes nothing
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def validate(settings: BenchSettings) -> None:
    for name in settings.model_list:
        if name not in BENCH_MODELS:
            raise UserError(f"unknown bench model {name!r}; choose from {', '.join(BENCH_MODELS)}")
    for name in settings.method_list:
        if name not in VARIANTS:
            raise UserError(f"unknown bench method {name!r}; choose from {', '.join(VARIANTS)}")
    if settings.dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}")
    if settings.dtype == "bf16" and not torch.cuda.is_available():
        raise UserError("--dtype bf16 needs a GPU (CPU matmuls in bf16 are not representative)")


def adapter_settings(settings: BenchSettings, variant: str) -> AdapterSettings:
    """--rank and --targets where the method takes them; a method with a rank of its own (VeRA) keeps it."""
    method = METHODS[VARIANTS[variant][0]]
    given = {"r_ab": settings.rank, "target_modules": settings.targets}
    flags = {k: v for k, v in given.items() if k in method.flags and k not in method.defaults}
    return RunConfig(peft_type=method.name, **flags).adapter_settings(total_steps=BENCH_TOTAL_STEPS)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def base_weights(model_name: str, dtype: torch.dtype) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    config = BENCH_MODELS[model_name]()
    with _device():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return config, model.state_dict()


def build_variant(
    method: str, config: PretrainedConfig, weights: dict[str, torch.Tensor], settings: BenchSettings
) -> nn.Module:
    """The method applied to a model whose frozen weights are the shared tensors (FFT gets its own copy)."""
    with _device():  # not the meta device: buffers outside the state dict (rotary frequencies) need real values
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[settings.dtype])
    registered = METHODS[VARIANTS[method][0]]
    if registered.full_finetune or registered.changes_base_weights:
        weights = {name: tensor.clone() for name, tensor in weights.items()}
    model.load_state_dict(weights, assign=True)
    model.tie_weights()
    use_efficient_kernels(model)  # what training runs
    model.config.use_cache = False
    torch.manual_seed(1)
    return VARIANTS[method][1](model, adapter_settings(settings, method)).train()


def make_step(model: nn.Module, settings: BenchSettings, vocab_size: int, variant: str) -> Callable[[], float]:
    """One optimizer step on a fixed batch (with the method's own per-step work); returns its wall time in s."""
    ids = torch.randint(0, vocab_size, (settings.batch, settings.seq), generator=torch.Generator().manual_seed(2))
    ids = ids.to(_device())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    after_step = METHODS[VARIANTS[variant][0]].after_optimizer_step
    steps_taken = 0

    def step() -> float:
        nonlocal steps_taken
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(model, steps_taken)
        steps_taken += 1
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def time_methods(model_name: str, settings: BenchSettings) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Step times per method, and trainable parameters per method."""
    config, weights = base_weights(model_name, DTYPES[settings.dtype])
    models = {m: build_variant(m, config, weights, settings) for m in settings.method_list}
    trainable = {m: sum(p.numel() for p in model.parameters() if p.requires_grad) for m, model in models.items()}
    steps = {m: make_step(model, settings, config.vocab_size, m) for m, model in models.items()}
    times: dict[str, list[float]] = {m: [] for m in settings.method_list}
    for repetition in range(settings.warmup + settings.repeats):
        measured = {method: step() for method, step in steps.items()}
        kind = "warm-up" if repetition < settings.warmup else "repetition"
        print(f"  {kind}: " + ", ".join(f"{m} {s:.3f}s" for m, s in measured.items()), flush=True)
        if repetition >= settings.warmup:
            for method, seconds in measured.items():
                times[method].append(seconds)
    return times, trainable


def _reset_peak_rss() -> None:
    """Forget the memory high-water mark of model construction, so the peak read later is training's.

    Freed heap pages go back to the OS first (glibc malloc_trim); then writing 5 to /proc/self/clear_refs
    resets the kernel's VmHWM (Linux >= 4.0).
    """
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_gb() -> float:
    status = Path("/proc/self/status").read_text()
    kilobytes = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    return kilobytes / 2**20


def probe_memory(model_name: str, method: str, settings: BenchSettings) -> float:
    """Peak memory (GB) during two training steps of one method, weights included, in this fresh process."""
    config, weights = base_weights(model_name, DTYPES[settings.dtype])
    step = make_step(build_variant(method, config, weights, settings), settings, config.vocab_size, method)
    del weights
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak_rss()
    step()
    step()
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return _peak_rss_gb()


def _memory_in_subprocess(model_name: str, method: str, settings: BenchSettings) -> float:
    payload = json.dumps({**dataclasses.asdict(settings), "models": model_name, "methods": method})
    result = subprocess.run(
        [sys.executable, "-m", "peftbench.bench", "--probe-memory", payload], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory probe for {method} on {model_name} failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def summarize(
    times: dict[str, list[float]], memory: dict[str, float], trainable: dict[str, int]
) -> dict[str, dict[str, Any]]:
    return {
        method: {
            "step_times_s": samples,
            "median_s": statistics.median(samples),
            "peak_memory_gb": memory.get(method),
            "trainable_params": trainable[method],
        }
        for method, samples in times.items()
    }


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """HiRA (ours) vs LoRA and PEFT's HiRA vs ours, for time and memory, where both were measured."""
    pairs = {
        "hira/lora": ("hira", "lora"),
        "hira-keep/lora": ("hira-keep", "lora"),
        "peft-hira/hira": ("peft-hira", "hira"),
    }
    out = {}
    for label, (top, bottom) in pairs.items():
        if top in results and bottom in results:
            out[f"time {label}"] = results[top]["median_s"] / results[bottom]["median_s"]
            if results[top]["peak_memory_gb"] and results[bottom]["peak_memory_gb"]:
                out[f"memory {label}"] = results[top]["peak_memory_gb"] / results[bottom]["peak_memory_gb"]
    return out


def format_table(model_name: str, results: dict[str, dict[str, Any]]) -> str:
    lora = results.get("lora")
    header = f"  {'method':10s} {'median step':>12s} {'x LoRA':>7s} {'peak mem':>9s} {'x LoRA':>7s} {'trainable':>12s}"
    lines = [f"{model_name}:", header]
    for method, row in results.items():
        time_ratio = f"{row['median_s'] / lora['median_s']:.3f}" if lora else "-"
        memory = row["peak_memory_gb"]
        memory_ratio = f"{memory / lora['peak_memory_gb']:.3f}" if lora and memory and lora["peak_memory_gb"] else "-"
        memory_text = f"{memory:.2f} GB" if memory else "-"
        lines.append(
            f"  {method:10s} {row['median_s']:>10.3f} s {time_ratio:>7s} {memory_text:>9s} {memory_ratio:>7s}"
            f" {row['trainable_params']:>12,d}"
        )
    return "\n".join(lines)


def bench_train(settings: BenchSettings, out: Path | None) -> dict[str, Any]:
    validate(settings)
    report: dict[str, Any] = {
        "settings": dataclasses.asdict(settings),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "environment": environment_record(),
        "models": {},
    }
    for model_name in settings.model_list:
        print(f"timing {', '.join(settings.method_list)} on {model_name} ...", flush=True)
        times, trainable = time_methods(model_name, settings)
        memory = (
            {}
            if settings.no_memory
            else {m: _memory_in_subprocess(model_name, m, settings) for m in settings.method_list}
        )
        results = summarize(times, memory, trainable)
        report["models"][model_name] = {"methods": results, "ratios": ratios(results)}
        print(format_table(model_name, results))
        for label, value in ratios(results).items():
            print(f"  {label}: {value:.3f}")
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
        print(f"written: {out}")
    return report


def bench_eval(
    model_name: str, dataset: str, examples: int, batch: int, beam_size: int, max_new_tokens: int, data_dir: str,
    out: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """Seconds per example of each way to score the same seeded examples, in one process."""
    from peftbench.data.prompts import build_prompt, eval_prompt_ids, scored_sequences
    from peftbench.data.registry import get_dataset
    from peftbench.data.sources import answer_options, load_test_examples
    from peftbench.evaluate.generate import generate_responses
    from peftbench.evaluate.loglik import score_options, score_options_naive, score_questions
    from peftbench.evaluate.runner import sample_indices
    from peftbench.models import load_base_model, load_tokenizer
    from peftbench.protocols import HIRA

    path = resolve_model_path(model_name)
    model, tokenizer = load_base_model(path, torch.float32).eval().to(_device()), load_tokenizer(path)
    spec = get_dataset(dataset)
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
        "model": model_name, "dataset": dataset, "examples": len(chosen), "device": str(_device()),
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


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder that is also the peftbench cache (tokenized data) until the block ends."""
    previous = os.environ.get("PEFTBENCH_CACHE")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["PEFTBENCH_CACHE"] = str(Path(folder, "cache"))
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("PEFTBENCH_CACHE")
            else:
                os.environ["PEFTBENCH_CACHE"] = previous


def bench_tokenize(examples: int, tokenizer_name: str, data_dir: str) -> dict[str, float]:
    """Seconds to build the training set (load, split, tokenize, cache) from a replicate of the local
    Commonsense mix of `examples` examples, then again from the cache, in a temporary cache folder."""
    from peftbench.data.pipeline import build_datasets
    from peftbench.data.sources import load_train_examples
    from peftbench.models import load_tokenizer

    tokenizer = load_tokenizer(resolve_model_path(tokenizer_name))
    local = load_train_examples("common_170k", data_dir).examples
    seconds = {}
    with scratch_folder() as folder:  # a cold cache, removed afterwards
        replicate = (local * (examples // len(local) + 1))[:examples]
        (folder / "commonsense_170k.json").write_text(json.dumps(replicate))
        config = RunConfig(dataset="common_170k", data_dir=str(folder))
        for attempt in ("first build", "from cache"):
            start = time.perf_counter()
            train = build_datasets(config, tokenizer).train
            seconds[attempt] = time.perf_counter() - start
            print(f"  {attempt}: {len(train)} training examples ready in {seconds[attempt]:.1f} s", flush=True)
    return seconds


if __name__ == "__main__" and sys.argv[1:2] == ["--probe-memory"]:
    fields = json.loads(sys.argv[2])
    probe_settings = BenchSettings(**fields)
    print(probe_memory(probe_settings.models, probe_settings.methods, probe_settings))
