"""``peftbench bench train``: step time and peak memory of every method, side by side in one run.

    peftbench bench train                                  # GPT-Neo-1.3B geometry (6 layers) and SmolLM2-135M
    peftbench bench train --models neo-6l --repeats 7 --out bench_train.json
    peftbench bench train --models neo-1.3b --dtype bf16   # on a GPU: the full 24-layer model in bf16

Step time is forward + backward + optimizer step, alternating methods repetition by repetition in
one process (the frozen base weights are shared), after warm-up, reported as medians. Peak memory is
measured in a fresh process per method over two training steps, model weights included: on CPU the
resident-set high-water mark reset after construction (Linux), on GPU the max allocated. That process is
``python -m peftbench.bench.train --probe-memory SETTINGS_JSON``; it prints the peak in GB.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from peftbench.bench.common import BENCH_MODELS, BENCH_TOTAL_STEPS, DTYPES, bench_device
from peftbench.config import RunConfig
from peftbench.config.choices import flag_help
from peftbench.errors import UserError
from peftbench.methods import METHODS, hira
from peftbench.methods.common import AdapterSettings
from peftbench.models.kernels import use_efficient_kernels
from peftbench.runs.records import environment_record


@dataclass
class BenchSettings:
    """`peftbench bench train` settings (each field is a flag)."""

    models: str = field(
        default="neo-6l,smollm2-135m",
        metadata=flag_help("of neo-6l (GPT-Neo-1.3B geometry, 6 layers), neo-1.3b, smollm2-135m"),
    )
    methods: str = field(
        default=",".join([*METHODS, "hira-keep", "peft-hira"]),
        metadata=flag_help(
            "methods to compare: any --peft_type, hira-keep (--hira_keep_product), peft-hira (PEFT's HiRA)"
        ),
    )
    batch: int = field(default=2, metadata=flag_help("sequences per step"))
    seq: int = field(default=256, metadata=flag_help("tokens per sequence"))
    rank: int = field(default=64, metadata=flag_help("r of the methods that take one and have none of their own"))
    targets: str = field(default="q_proj,v_proj", metadata=flag_help("adapted modules"))
    dtype: str = field(default="fp32", metadata=flag_help("fp32, or bf16 on a GPU"))
    repeats: int = field(default=5, metadata=flag_help("measured steps per method"))
    warmup: int = field(default=1, metadata=flag_help("unmeasured steps per method first"))
    no_memory: bool = field(default=False, metadata=flag_help("skip the per-method memory processes"))

    @property
    def model_list(self) -> list[str]:
        return self.models.split(",")

    @property
    def method_list(self) -> list[str]:
        return self.methods.split(",")


# Bench variants beyond the registry's methods: -> (the method whose settings it takes, how to build it).
EXTRA_VARIANTS: dict[str, tuple[str, Callable[[PreTrainedModel, AdapterSettings], nn.Module]]] = {
    "hira-keep": ("hira", lambda model, s: METHODS["hira"].apply(model, dataclasses.replace(s, keep_product=True))),
    "peft-hira": ("hira", lambda model, s: get_peft_model(model, hira.peft_config(model, s))),
}
VARIANTS = {name: (name, method.apply) for name, method in METHODS.items()} | EXTRA_VARIANTS


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


def base_weights(model_name: str, dtype: torch.dtype) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    config = BENCH_MODELS[model_name]()
    with bench_device():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return config, model.state_dict()


def build_variant(
    method: str, config: PretrainedConfig, weights: dict[str, torch.Tensor], settings: BenchSettings
) -> nn.Module:
    """The method applied to a model whose frozen weights are the shared tensors (FFT gets its own copy)."""
    with bench_device():  # not the meta device: buffers outside the state dict (rotary frequencies) need real values
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
    ids = ids.to(bench_device())
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
        [sys.executable, "-m", "peftbench.bench.train", "--probe-memory", payload], capture_output=True, text=True
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


if __name__ == "__main__" and sys.argv[1:2] == ["--probe-memory"]:
    fields = json.loads(sys.argv[2])
    probe_settings = BenchSettings(**fields)
    print(probe_memory(probe_settings.models, probe_settings.methods, probe_settings))
