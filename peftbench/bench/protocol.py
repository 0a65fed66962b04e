"""`peftbench bench protocol`: the paper preset's throughput, measured, and its projected wall time.

    peftbench bench protocol                          # on a GPU: GPT-Neo-1.3B geometry, random weights, bf16
    peftbench bench protocol --model tests/tiny-neo --methods lora --train_steps 2 --questions 4   # CPU check

Training runs through ``peftbench train`` with each method's flags of ``reproduce --preset paper`` (the
specification's commands), once as executed by default (``--micro_batch auto``) and once literally
(``--micro_batch spec``), on the local commonsense mix; samples/s is measured after the first step.
Evaluation runs ``peftbench eval`` of the base model on a seeded sample of every benchmark in both modes.
The projection divides the paper preset's work (one epoch of Commonsense-170K per method; every test
question of the nine benchmarks, per model and mode) by these rates. Not in it: validation (120 examples
every 80 steps), checkpoint saves, model loading. A random-weight model never stops generating early,
so generation is timed at its full ``max_new_tokens`` (a trained model without EOS does the same).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from peftbench.bench.common import BENCH_MODELS, scratch_folder, step_seconds
from peftbench.config import EvalConfig, RunConfig
from peftbench.data.registry import resolve_names
from peftbench.data.sources import load_test_examples
from peftbench.errors import UserError
from peftbench.evaluate.runner import evaluate
from peftbench.models.load import load_tokenizer, resolve_model_path
from peftbench.runs.records import environment_record, read_records
from peftbench.studies.design import StudyDesign
from peftbench.studies.loader import load_study
from peftbench.studies.plan import Study
from peftbench.train.recipe import train

# Commonsense-170K, the specification's training set (LLM-Adapters' commonsense_170k.json), less validation.
PAPER_TRAIN_EXAMPLES = 170_000 - 120
EXECUTIONS = ("auto", "spec")


@dataclasses.dataclass(frozen=True)
class ProtocolBench:
    model: str  # a BENCH_MODELS geometry (random weights) or a model folder
    tokenizer: str  # model whose tokenizer the random-weight geometry uses
    methods: tuple[str, ...]
    train_steps: int  # measured optimizer steps per method and execution (one more runs first, unmeasured)
    questions: int  # seeded questions per benchmark and mode
    data_dir: str


def model_folder(bench: ProtocolBench, folder: Path) -> str:
    """A model folder: the given one, or the geometry with random weights and the tokenizer, saved once."""
    if bench.model not in BENCH_MODELS:
        if not Path(bench.model).is_dir():
            raise UserError(f"--model {bench.model}: neither a folder nor one of {', '.join(BENCH_MODELS)}")
        return bench.model
    torch.manual_seed(0)
    config = BENCH_MODELS[bench.model]()
    tokenizer = load_tokenizer(resolve_model_path(bench.tokenizer))
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def training_rate(
    bench: ProtocolBench, paper: StudyDesign, model: str, peft_type: str, execution: str, out: Path
) -> dict[str, Any]:
    """Samples/s of the paper preset's command for this method, steps after the first."""
    study = Study(paper, out, (36,), bench.data_dir, tuple(paper.all_plans.values()))
    settings = study.train_settings(36, peft_type) | {"model_name": model, "resume": False, "micro_batch": execution}
    flags = RunConfig(**settings)  # the preset's flags with the protocol's defaults filled in
    per_step = flags.batch * flags.grad_acc
    steps = bench.train_steps + 1
    config = dataclasses.replace(
        flags, max_steps=steps, max_train_samples=per_step * steps, val_set_size=0, logging_steps=1
    )
    result = train(config)
    records = read_records(result.run_dir / "output.jsonl")
    seconds = sum(step_seconds(result.run_dir))
    return {
        "samples_per_s": per_step * bench.train_steps / seconds,
        "execution": records[0]["execution"],
        "padding_fraction": records[-1]["padding_fraction"],
        **{k: v for k, v in records[-1].items() if k.startswith("peak_")},
    }


def evaluation_rates(bench: ProtocolBench, paper: StudyDesign, model: str, out: Path) -> dict[str, dict[str, float]]:
    """Questions/s per mode and benchmark (the preset's evaluation settings, on the base model)."""
    rates: dict[str, dict[str, float]] = {}
    for plan in paper.evaluations:
        config = EvalConfig(model_name=model, dataset="all", eval_mode=plan.mode, max_eval_samples=bench.questions,
                            output_dir=str(out / plan.mode), data_dir=bench.data_dir, **plan.settings)  # fmt: skip
        rates[plan.mode] = {record["dataset"]: record["examples_per_s"] for record in evaluate(config)}
    return rates


def projection(
    train: dict[str, dict[str, dict[str, Any]]], evaluation: dict[str, dict[str, float]], data_dir: str
) -> dict[str, Any]:
    """Hours of `reproduce --preset paper`: each method's epoch at its default execution, and every test
    question of the benchmarks measured, per model (zero-shot and each method) and mode."""
    training_s = {method: PAPER_TRAIN_EXAMPLES / runs["auto"]["samples_per_s"] for method, runs in train.items()}
    sizes = {name: len(load_test_examples(name, data_dir).examples) for name in resolve_names("all")}
    models = 1 + len(train)
    evaluation_s = {
        mode: models * sum(sizes[name] / rate for name, rate in by_dataset.items())
        for mode, by_dataset in evaluation.items()
    }
    total = sum(training_s.values()) + sum(evaluation_s.values())
    return {"training_s": training_s, "evaluation_s": evaluation_s, "test_questions": sizes, "total_h": total / 3600}


def bench_protocol(bench: ProtocolBench, out: Path | None) -> dict[str, Any]:
    paper = load_study("paper")
    unknown = [m for m in bench.methods if m not in paper.all_plans]
    if unknown:
        raise UserError(f"--methods: the paper preset has no command for {', '.join(unknown)}")
    with scratch_folder() as folder:  # tokenized data, runs and results, removed after
        model = model_folder(bench, folder / "model")
        train_rates = {
            method: {e: training_rate(bench, paper, model, method, e, folder / method / e) for e in EXECUTIONS}
            for method in bench.methods
        }
        evaluation = evaluation_rates(bench, paper, model, folder / "eval")
    report = {
        "bench": dataclasses.asdict(bench),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "training": train_rates,
        "evaluation_questions_per_s": evaluation,
        "projection": projection(train_rates, evaluation, bench.data_dir),
        "environment": environment_record(),
    }
    print(format_report(report))
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
        print(f"written: {out}")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"device: {report['device']}", "training (samples/s; the paper preset's flags):"]
    for method, runs in report["training"].items():
        auto, spec = runs["auto"], runs["spec"]
        shape = f"{auto['execution']['micro_batch']}x{auto['execution']['grad_acc']}"
        speedup = auto["samples_per_s"] / spec["samples_per_s"]
        lines.append(f"  {method:6s} default {auto['samples_per_s']:8.1f} ({shape}, checkpointing "
                     f"{auto['execution']['checkpointing']}, packed {auto['execution']['packing']}, padding "
                     f"{auto['padding_fraction']:.1%})  literal {spec['samples_per_s']:8.1f} (padding "
                     f"{spec['padding_fraction']:.1%})  x{speedup:.2f}")  # fmt: skip
    if {"hira", "lora"} <= set(report["training"]):
        ratio = (
            report["training"]["lora"]["auto"]["samples_per_s"] / report["training"]["hira"]["auto"]["samples_per_s"]
        )
        lines.append(f"  time hira/lora: {ratio:.3f}")
    lines.append("evaluation (questions/s):")
    modes = report["evaluation_questions_per_s"]
    for name in next(iter(modes.values())):
        lines.append("  " + f"{name:14s}" + "  ".join(f"{mode} {rates[name]:8.1f}" for mode, rates in modes.items()))
    if {"generate", "loglik"} <= set(modes):
        speedups = [modes["loglik"][n] / modes["generate"][n] for n in modes["loglik"]]
        lines.append(f"  loglik/generate: {min(speedups):.1f}x to {max(speedups):.1f}x")
    projected = report["projection"]
    lines.append(
        f"projected `reproduce --preset paper`: {projected['total_h']:.2f} h "
        f"(training {sum(projected['training_s'].values()) / 3600:.2f} h, evaluation "
        f"{sum(projected['evaluation_s'].values()) / 3600:.2f} h)"
    )
    return "\n".join(lines)
