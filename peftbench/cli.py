"""Command-line entry points: flags -> config dataclasses -> library functions. No logic lives here.

peftbench train --peft_type hira --model_name smollm2-135m --dataset common_170k ...
peftbench eval  --ckpt results_hira/<run>/checkpoint-N --dataset all
peftbench analyze results_hira results_lora --out results_analysis
peftbench data list
peftbench reproduce --preset cpu-small
peftbench demo
peftbench doctor
peftbench published --model meta-llama/Llama-2-7b-hf
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from peftbench.config import BenchSettings, EvalConfig, RunConfig, default_data_dir
from peftbench.errors import TrainingInterrupted, UserError
from peftbench.tracking import TRACKERS

_SCALARS = (bool, int, float, str)


def _scalar_type(annotation: Any) -> type:
    """int for `int`, int for `int | None`, and so on."""
    if annotation in _SCALARS:
        return annotation
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(options) == 1 and options[0] in _SCALARS:
        return options[0]
    raise TypeError(f"no command-line type for {annotation!r}")


def add_config_flags(parser: argparse.ArgumentParser, config_class: type, skip: Iterable[str] = ()) -> set[str]:
    """One --flag per dataclass field; absent flags keep the dataclass default. Returns the flag names."""
    hints = typing.get_type_hints(config_class)
    added = set()
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        kind = _scalar_type(hints[field.name])
        options: dict[str, Any] = {"help": field.metadata.get("help"), "default": argparse.SUPPRESS}
        if kind is bool:
            # A bool a protocol sets (default None) can be switched either way: --flag / --no-flag.
            options["action"] = argparse.BooleanOptionalAction if field.default is None else "store_true"
        else:
            options["type"] = kind
            if "choices" in field.metadata:
                options["choices"] = field.metadata["choices"]
        parser.add_argument(f"--{field.name}", **options)
        added.add(field.name)
    return added


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one 'error:' line (exit 2) instead of a usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_config(config_class: type, namespace: argparse.Namespace) -> Any:
    names = {field.name for field in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in vars(namespace).items() if k in names})


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def run_guarded(action: Callable[[], object]) -> int:
    """Run a command; bad input becomes one 'error:' line and exit status 2."""
    try:
        action()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _train(args: argparse.Namespace) -> None:
    from peftbench.train import train

    train(build_config(RunConfig, args))


def _eval(args: argparse.Namespace) -> None:
    from peftbench.evaluate.runner import evaluate

    evaluate(build_config(EvalConfig, args))


def _analyze(args: argparse.Namespace) -> None:
    from peftbench.analyze import analyze

    print(analyze([Path(p) for p in args.results], Path(args.out), args.mode))
    print(f"written to {args.out}: accuracy.csv, accuracy.md, stats.json, accuracy.png, loss_curves.png, report.md")


def _data_prepare(args: argparse.Namespace) -> None:
    from peftbench.data.registry import resolve_names
    from peftbench.data.tools import prepare

    prepare(Path(args.out), resolve_names(args.datasets), args.data_dir)
    print(f"written: {args.out} (use it as --data_dir)")


def _data_stats(args: argparse.Namespace) -> None:
    from peftbench.analyze import to_markdown
    from peftbench.data.registry import resolve_names
    from peftbench.data.tools import stats_rows
    from peftbench.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(args.tokenizer))
    print(to_markdown(stats_rows(resolve_names(args.datasets), args.data_dir, tokenizer, args.max_length)))


def _export(args: argparse.Namespace) -> None:
    from peftbench.checkpoint import export_merged

    print(f"written: {export_merged(Path(args.ckpt), Path(args.out), args.load_bit)}")


def _data_list(args: argparse.Namespace) -> None:
    from peftbench.data.registry import ALL_DATASETS
    from peftbench.data.sources import load_test_examples

    for spec in (s for s in ALL_DATASETS if not s.union_of):
        try:
            loaded = load_test_examples(spec.name, args.data_dir)
            found = f"{len(loaded.examples)} test examples from {', '.join(loaded.origins)}"
        except UserError as exc:
            found = str(exc)
        print(f"{spec.name:14s} aliases={','.join(spec.aliases) or '-':28s} {found}")


def _demo(args: argparse.Namespace) -> None:
    from peftbench.demo import run_demo
    from peftbench.models import use_local_files_only

    use_local_files_only()  # the offline demo reads local files only

    run_demo(Path(args.out), args.data_dir, train_samples=args.train_samples, eval_samples=args.eval_samples)


def _reproduce(args: argparse.Namespace) -> None:
    from peftbench.executors import DONE_BEFORE, FINISHED, choose_executor, run_study
    from peftbench.reproduce import Study, check_device, describe, seeds_for
    from peftbench.results_page import rewrite_page, write_results
    from peftbench.studies import SHIPPED, load_study

    if args.study is not None and args.preset is not None:
        raise UserError(f"give the study once: {args.study} or --preset {args.preset}")
    design = load_study(args.study or args.preset or "cpu-small")
    overrides = (args.model_name, args.max_train_samples, args.max_eval_samples, args.datasets, args.eval_modes)
    design = design.with_overrides(*overrides)
    shipped = Path(design.source).parent == SHIPPED and not any(o is not None for o in overrides)
    out, data_dir = Path(args.out or f"reproduce_{design.name}"), args.data_dir
    if args.executor != "local":  # the steps run in other working directories, maybe on other nodes
        out, data_dir = out.resolve(), ",".join(str(Path(d).resolve()) for d in data_dir.split(","))
    page = Path(args.page or (f"docs/results/{design.name}.md" if shipped else out / f"{design.name}.md"))
    if args.render_only:
        print(f"results page: {rewrite_page(page, args.note)}")
        return
    seeds = seeds_for(design.seeds if args.seeds is None else args.seeds)
    study = Study(design, out, seeds, data_dir, design.choose_methods(args.methods), args.report_to)
    if args.dry_run:
        print(describe(study))
        return
    slurm = {"partition": args.slurm_partition, "time_min": args.slurm_time_min,
             "gpus_per_job": args.slurm_gpus_per_job, "sbatch": args.slurm_sbatch}  # fmt: skip
    executor = choose_executor(args.executor, args.workers, args.gpus, args.ray_address, design.slurm, slurm,
                               args.slurm_cluster, design.needs_gpu)  # fmt: skip
    if args.executor == "local" and not args.gpus:
        check_device(design)
    command = shlex.join(["peftbench", "reproduce", *sys.argv[2:]]) if sys.argv[1:2] == ["reproduce"] else ""
    outcomes, wall_time = run_study(study, executor, command or "the same peftbench reproduce command")
    unfinished = [o for o in outcomes if o.state not in (FINISHED, DONE_BEFORE)]
    if unfinished:
        raise UserError(f"{len(unfinished)} of {len(outcomes)} steps did not finish (summary above); no results page")
    print(f"results page: {write_results(study, page, command, wall_time, args.note)}")


def _add_reproduce(commands: Any) -> None:
    reproduce = commands.add_parser(
        "reproduce", help="a whole study: zero-shot and every method trained, evaluated, analysed; a results page"
    )
    shipped = "a study file, or a shipped study: cpu-small (default), paper, hira-llama2-7b, hira-llama3-8b"
    reproduce.add_argument("study", nargs="?", default=None, help=shipped)
    reproduce.add_argument("--preset", default=None, help="the same as the study argument (a shipped study's name)")
    reproduce.add_argument("--seeds", type=int, default=None, help="train over this many seeds (36, 37, ...)")
    reproduce.add_argument("--methods", default=None, help="comma-separated methods of the study (default: its own)")
    overrides = reproduce.add_argument_group("overrides of the study file (a smoke test in one line)")
    overrides.add_argument("--model_name", default=None)
    overrides.add_argument("--max_train_samples", type=int, default=None)
    overrides.add_argument("--max_eval_samples", type=int, default=None)
    overrides.add_argument("--datasets", default=None, help="benchmarks: a name, a comma-separated list, or all")
    overrides.add_argument("--eval_modes", default=None, help="comma-separated: generate, loglik")
    reproduce.add_argument("--report_to", default="none", choices=TRACKERS,
                           help="tracker for training runs and their evaluations (the Trainer's)")  # fmt: skip
    reproduce.add_argument("--out", default=None, help="study folder; default reproduce_<study>")
    reproduce.add_argument("--page", default=None, help="results page; default docs/results/<study>.md")
    reproduce.add_argument("--dry_run", action="store_true", help="print the plan and its commands; run nothing")
    reproduce.add_argument(
        "--render_only", action="store_true", help="rewrite the page and plots from its summary.json; run nothing"
    )
    reproduce.add_argument(
        "--note",
        action="append",
        default=[],
        help="a sentence the page shows under its title (repeatable); with --render_only, replaces the summary's notes",
    )
    engines = reproduce.add_argument_group("where the steps run")
    engines.add_argument("--executor", default="local", choices=("local", "ray", "slurm"))
    engines.add_argument("--workers", type=int, default=None, help="steps at once (local; Ray's local CPUs)")
    engines.add_argument("--gpus", default=None, help="local: one step per GPU at once, e.g. 0,1,2,3")
    engines.add_argument("--ray_address", default=None, help="join this Ray cluster (default: a local one)")
    engines.add_argument("--slurm_cluster", default="slurm", help="slurm, or local (submitit's local executor)")
    engines.add_argument("--slurm_partition", default=None)
    engines.add_argument("--slurm_time_min", type=int, default=None, help="time limit of each job")
    engines.add_argument("--slurm_gpus_per_job", type=int, default=None)
    engines.add_argument("--slurm_sbatch", action="append", default=[], help="an sbatch option, e.g. --account=abc")
    _add_data_dir(reproduce)
    reproduce.set_defaults(action=_reproduce)


def _bench_train(args: argparse.Namespace) -> None:
    from peftbench.bench import BenchSettings, bench_train

    bench_train(build_config(BenchSettings, args), Path(args.out) if args.out else None)


def _bench_eval(args: argparse.Namespace) -> None:
    from peftbench.bench import bench_eval

    out = Path(args.out) if args.out else None
    bench_eval(
        args.model, args.dataset, args.examples, args.batch, args.beam_size, args.max_new_tokens, args.data_dir, out
    )


def _bench_tokenize(args: argparse.Namespace) -> None:
    from peftbench.bench import bench_tokenize

    bench_tokenize(args.examples, args.tokenizer, args.data_dir)


def _bench_protocol(args: argparse.Namespace) -> None:
    from peftbench.bench_protocol import ProtocolBench, bench_protocol

    methods = tuple(name.strip() for name in args.methods.split(",") if name.strip())
    settings = ProtocolBench(args.model, args.tokenizer, methods, args.train_steps, args.questions, args.data_dir)
    bench_protocol(settings, Path(args.out) if args.out else None)


def _bench_trainer(args: argparse.Namespace) -> None:
    from peftbench.bench_protocol import bench_trainer

    bench_trainer(args.model, args.steps, args.data_dir, Path(args.out) if args.out else None)


def _bench_study(args: argparse.Namespace) -> None:
    from peftbench.bench_study import bench_study

    entries = [n.strip() for n in args.workers.split(",")]
    if not all(n.isdigit() and int(n) > 0 for n in entries):  # "1,x" is an error, not "1"
        raise UserError(f"--workers {args.workers!r}: expected comma-separated positive numbers, e.g. 1,2")
    bench_study(args.model, [int(n) for n in entries], args.data_dir, Path(args.out) if args.out else None)


def _bench_memory(args: argparse.Namespace) -> None:
    from peftbench.bench_memory import MemoryBench, bench_memory

    settings = MemoryBench(args.model, args.method, args.seq, args.answer_tokens, args.dtype)
    bench_memory(settings, Path(args.out) if args.out else None)


def _doctor(args: argparse.Namespace) -> None:
    from peftbench.doctor import FAIL, doctor

    failed = [check.name for check in doctor(Path(args.out) if args.out else None) if check.status == FAIL]
    if failed:
        raise UserError(f"doctor: {', '.join(failed)} failed on this machine (see the lines above)")


def _published(args: argparse.Namespace) -> None:
    from peftbench.published import format_rows, published_rows

    rows = published_rows(args.source, args.model)
    if not rows:
        raise UserError(f"no published row for model {args.model!r}" + (f" in {args.source}" if args.source else ""))
    print(format_rows(rows))


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data_dir", default=default_data_dir(), help="comma-separated data folders (env PEFTBENCH_DATA_DIR)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="peftbench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one method")
    add_config_flags(train, RunConfig)
    train.set_defaults(action=_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint or a base model on benchmarks ('all' for all)")
    add_config_flags(evaluate, EvalConfig)
    evaluate.set_defaults(action=_eval)

    analyze = commands.add_parser("analyze", help="accuracy table over evaluation results")
    analyze.add_argument("results", nargs="+", help="folders searched for output_*_eval.jsonl")
    analyze.add_argument("--out", default="results_analysis", help="where the tables, plots and report go")
    analyze.add_argument("--mode", default="generate", choices=("generate", "loglik"), help="which results to use")
    analyze.set_defaults(action=_analyze)

    export = commands.add_parser("export", help="merge a checkpoint's adapter into its base model and save it")
    export.add_argument("--ckpt", required=True, help="checkpoint, run or results folder")
    export.add_argument("--out", required=True, help="folder for the merged transformers model")
    export.add_argument("--load_bit", type=int, default=32, choices=(16, 32))
    export.set_defaults(action=_export)

    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    data_list = data.add_parser("list", help="the registered datasets and where their test data is found")
    _add_data_dir(data_list)
    data_list.set_defaults(action=_data_list)
    data_prepare = data.add_parser(
        "prepare", help="write the test/train sets and commonsense_170k.json, LLM-Adapters layout"
    )
    data_prepare.add_argument("--out", required=True)
    data_prepare.add_argument("--datasets", default="all", help="names, comma-separated, or all")
    _add_data_dir(data_prepare)
    data_prepare.set_defaults(action=_data_prepare)
    data_stats = data.add_parser("stats", help="counts, label balance, token lengths, truncation")
    data_stats.add_argument("--datasets", default="all")
    data_stats.add_argument("--tokenizer", default="smollm2-135m", help="model name whose tokenizer counts tokens")
    data_stats.add_argument("--max_length", type=int, default=256)
    _add_data_dir(data_stats)
    data_stats.set_defaults(action=_data_stats)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    bench_train = bench.add_parser("train", help="step time and peak memory of every method, side by side")
    add_config_flags(bench_train, BenchSettings)
    bench_train.add_argument("--out", default="bench_train.json", help="JSON report ('' for none)")
    bench_train.set_defaults(action=_bench_train)

    bench_eval = bench.add_parser("eval", help="generation vs log-likelihood scoring on the same examples")
    bench_eval.add_argument("--model", default="smollm2-135m")
    bench_eval.add_argument("--dataset", default="arc_challenge")
    bench_eval.add_argument("--examples", type=int, default=32)
    bench_eval.add_argument("--batch", type=int, default=8)
    bench_eval.add_argument("--beam_size", type=int, default=4)
    bench_eval.add_argument("--max_new_tokens", type=int, default=16)
    _add_data_dir(bench_eval)
    bench_eval.add_argument("--out", default="bench_eval.json", help="JSON report ('' for none)")
    bench_eval.set_defaults(action=_bench_eval)

    bench_tokenize = bench.add_parser("tokenize", help="build a 170k-example training set, then again from cache")
    bench_tokenize.add_argument("--examples", type=int, default=170_000)
    bench_tokenize.add_argument("--tokenizer", default="smollm2-135m")
    _add_data_dir(bench_tokenize)
    bench_tokenize.set_defaults(action=_bench_tokenize)

    protocol = bench.add_parser(
        "protocol", help="the paper preset's training and evaluation rates, and its projected wall time"
    )
    protocol.add_argument("--model", default="neo-1.3b", help="a bench geometry (random weights) or a model folder")
    protocol.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer of a random-weight geometry")
    protocol.add_argument("--methods", default="hira,lora,fft,ia3", help="methods of the paper preset to time")
    protocol.add_argument("--train_steps", type=int, default=3, help="measured optimizer steps per method")
    protocol.add_argument("--questions", type=int, default=64, help="seeded questions per benchmark and mode")
    _add_data_dir(protocol)
    protocol.add_argument("--out", default="bench_protocol.json", help="JSON report ('' for none)")
    protocol.set_defaults(action=_bench_protocol)

    trainer = bench.add_parser("trainer", help="seconds per step of peftbench train against a plain PEFT loop")
    trainer.add_argument("--model", default="smollm2-135m")
    trainer.add_argument("--steps", type=int, default=8, help="measured steps (one more runs first)")
    _add_data_dir(trainer)
    trainer.add_argument("--out", default="bench_trainer.json", help="JSON report ('' for none)")
    trainer.set_defaults(action=_bench_trainer)

    study = bench.add_parser("study", help="a tiny study's wall time with 1 and N local workers, side by side")
    study.add_argument("--model", default="smollm2-135m")
    study.add_argument("--workers", default="1,2", help="comma-separated worker counts, the first the reference")
    _add_data_dir(study)
    study.add_argument("--out", default="bench_study.json", help="JSON report ('' for none)")
    study.set_defaults(action=_bench_study)

    memory = bench.add_parser("memory", help="activations a training sequence keeps, by attention and loss kernel")
    memory.add_argument("--model", default="neo-1.3b", help="a GPT-Neo bench geometry or GPT-Neo model folder")
    memory.add_argument("--method", default="hira", help="the paper preset's adapter of this --peft_type")
    memory.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    memory.add_argument("--answer_tokens", type=int, default=16, help="labelled tokens at the end of the sequence")
    memory.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="weights and activations")
    memory.add_argument("--out", default="bench_memory.json", help="JSON report ('' for none)")
    memory.set_defaults(action=_bench_memory)

    _add_reproduce(commands)

    demo = commands.add_parser("demo", help="offline demo: HiRA on the embedded model, evaluate, table")
    demo.add_argument("--out", default="demo_results")
    _add_data_dir(demo)
    demo.add_argument("--train_samples", type=int, default=256)
    demo.add_argument("--eval_samples", type=int, default=12)
    demo.set_defaults(action=_demo)

    published = commands.add_parser("published", help="published commonsense results with their sources")
    published.add_argument("--model", default=None, help="e.g. meta-llama/Llama-2-7b-hf or Llama-2-7B")
    published.add_argument("--source", default=None, help="one table: hira_iclr2025_table1, dora_commonsense, ...")
    published.set_defaults(action=_published)

    check = commands.add_parser("doctor", help="check this machine (GPU numerics, memory plan, DDP) in minutes")
    check.add_argument("--out", default="", help="JSON report ('' for none)")
    check.set_defaults(action=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    return run_guarded(lambda: args.action(args))


if __name__ == "__main__":
    sys.exit(main())
