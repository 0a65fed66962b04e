"""``peftbench bench train|eval|tokenize|protocol|trainer|study|memory``: the benchmarks (see peftbench.bench)."""

from __future__ import annotations

import argparse
from typing import Any

from peftbench.bench.train import BenchSettings
from peftbench.cli.flags import add_config_flags, add_data_dir, build_config, optional_path
from peftbench.errors import UserError


def add_to(commands: Any) -> None:
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    train = bench.add_parser("train", help="step time and peak memory of every method, side by side")
    add_config_flags(train, BenchSettings)
    train.add_argument("--out", default="bench_train.json", help="JSON report ('' for none)")
    train.set_defaults(action=run_train)

    evaluation = bench.add_parser("eval", help="generation vs log-likelihood scoring on the same examples")
    evaluation.add_argument("--model", default="smollm2-135m")
    evaluation.add_argument("--dataset", default="arc_challenge")
    evaluation.add_argument("--examples", type=int, default=None, help="default 32 (--against: 200)")
    evaluation.add_argument("--batch", default="8", help="questions per pass, or auto")
    evaluation.add_argument(
        "--against", choices=("lm-eval",), help="instead: peftbench and lm-evaluation-harness, same questions"
    )
    evaluation.add_argument("--lm_eval_batch", type=int, default=4, help="with --against: lm-eval's batch size")
    evaluation.add_argument("--rounds", type=int, default=3, help="with --against: runs of each, medians kept")
    evaluation.add_argument("--modes", default="loglik,generate", help="with --against: loglik, generate or both")
    evaluation.add_argument("--generate_questions", type=int, default=16, help="with --against: for generation")
    evaluation.add_argument("--beam_size", type=int, default=None, help="default: the protocol's (4)")
    evaluation.add_argument(
        "--max_new_tokens", type=int, default=None, help="default: the protocol's (16; math 200, dialogue 32)"
    )
    add_data_dir(evaluation)
    evaluation.add_argument("--out", default="bench_eval.json", help="JSON report ('' for none)")
    evaluation.set_defaults(action=run_eval)

    tokenize = bench.add_parser("tokenize", help="build a 170k-example training set, then again from cache")
    tokenize.add_argument("--examples", type=int, default=170_000)
    tokenize.add_argument("--tokenizer", default="smollm2-135m")
    add_data_dir(tokenize)
    tokenize.set_defaults(action=run_tokenize)

    protocol = bench.add_parser(
        "protocol", help="the paper preset's training and evaluation rates, and its projected wall time"
    )
    protocol.add_argument("--model", default="neo-1.3b", help="a bench geometry (random weights) or a model folder")
    protocol.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer of a random-weight geometry")
    protocol.add_argument("--methods", default="hira,lora,fft,ia3", help="methods of the paper preset to time")
    protocol.add_argument("--train_steps", type=int, default=3, help="measured optimizer steps per method")
    protocol.add_argument("--questions", type=int, default=64, help="seeded questions per benchmark and mode")
    add_data_dir(protocol)
    protocol.add_argument("--out", default="bench_protocol.json", help="JSON report ('' for none)")
    protocol.set_defaults(action=run_protocol)

    trainer = bench.add_parser("trainer", help="seconds per step of peftbench train against a plain PEFT loop")
    trainer.add_argument("--model", default="smollm2-135m")
    trainer.add_argument("--steps", type=int, default=8, help="measured steps (one more runs first)")
    add_data_dir(trainer)
    trainer.add_argument("--out", default="bench_trainer.json", help="JSON report ('' for none)")
    trainer.set_defaults(action=run_trainer)

    study = bench.add_parser("study", help="a tiny study's wall time with 1 and N local workers, side by side")
    study.add_argument("--model", default="smollm2-135m")
    study.add_argument("--workers", default="1,2", help="comma-separated worker counts, the first the reference")
    add_data_dir(study)
    study.add_argument("--out", default="bench_study.json", help="JSON report ('' for none)")
    study.set_defaults(action=run_study)

    memory = bench.add_parser("memory", help="activations a training sequence keeps, by attention and loss kernel")
    memory.add_argument("--model", default="neo-1.3b", help="a GPT-Neo bench geometry or GPT-Neo model folder")
    memory.add_argument("--method", default="hira", help="the paper preset's adapter of this --peft_type")
    memory.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    memory.add_argument("--answer_tokens", type=int, default=16, help="labelled tokens at the end of the sequence")
    memory.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="weights and activations")
    memory.add_argument("--out", default="bench_memory.json", help="JSON report ('' for none)")
    memory.set_defaults(action=run_memory)


def run_train(args: argparse.Namespace) -> None:
    from peftbench.bench.train import bench_train

    bench_train(build_config(BenchSettings, args), optional_path(args.out))


def run_eval(args: argparse.Namespace) -> None:
    if args.batch != "auto" and not (args.batch.isdigit() and int(args.batch) > 0):
        raise UserError(f"--batch must be auto or a positive number of questions, got {args.batch!r}")
    if args.against is None:
        from peftbench.bench.eval import bench_eval

        bench_eval(args.model, args.dataset, args.examples or 32, args.batch, args.beam_size or 4,
                   args.max_new_tokens or 16, args.data_dir, optional_path(args.out))  # fmt: skip
        return
    from peftbench.bench.against import AgainstBench, bench_against

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or not set(modes) <= {"loglik", "generate"}:
        raise UserError(f"--modes {args.modes!r}: expected loglik, generate or loglik,generate")
    settings = AgainstBench(args.model, args.dataset, args.examples or 200, args.batch, args.lm_eval_batch,
                            args.beam_size, args.max_new_tokens, args.rounds, args.generate_questions, modes,
                            args.data_dir)  # fmt: skip
    out = optional_path(args.out if args.out != "bench_eval.json" else "bench_eval_against.json")
    bench_against(settings, out)


def run_tokenize(args: argparse.Namespace) -> None:
    from peftbench.bench.tokenize import bench_tokenize

    bench_tokenize(args.examples, args.tokenizer, args.data_dir)


def run_protocol(args: argparse.Namespace) -> None:
    from peftbench.bench.protocol import ProtocolBench, bench_protocol

    methods = tuple(name.strip() for name in args.methods.split(",") if name.strip())
    settings = ProtocolBench(args.model, args.tokenizer, methods, args.train_steps, args.questions, args.data_dir)
    bench_protocol(settings, optional_path(args.out))


def run_trainer(args: argparse.Namespace) -> None:
    from peftbench.bench.trainer import bench_trainer

    bench_trainer(args.model, args.steps, args.data_dir, optional_path(args.out))


def run_study(args: argparse.Namespace) -> None:
    from peftbench.bench.study import bench_study

    entries = [n.strip() for n in args.workers.split(",")]
    if not all(n.isdigit() and int(n) > 0 for n in entries):  # "1,x" is an error, not "1"
        raise UserError(f"--workers {args.workers!r}: expected comma-separated positive numbers, e.g. 1,2")
    bench_study(args.model, [int(n) for n in entries], args.data_dir, optional_path(args.out))


def run_memory(args: argparse.Namespace) -> None:
    from peftbench.bench.memory import MemoryBench, bench_memory

    settings = MemoryBench(args.model, args.method, args.seq, args.answer_tokens, args.dtype)
    bench_memory(settings, optional_path(args.out))
