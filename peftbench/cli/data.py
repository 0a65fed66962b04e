"""``peftbench data list|prepare|stats``: the registered datasets, their files written out, their statistics."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from peftbench.cli.flags import add_data_dir
from peftbench.errors import UserError


def add_to(commands: Any) -> None:
    data = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    listing = data.add_parser("list", help="the registered datasets, their tasks and where their test data is found")
    add_data_dir(listing)
    listing.set_defaults(action=run_list)
    prepare = data.add_parser(
        "prepare", help="write the test/train sets and commonsense_170k.json, LLM-Adapters layout"
    )
    prepare.add_argument("--out", required=True)
    prepare.add_argument("--datasets", default="all", help="names, comma-separated, or all")
    add_data_dir(prepare)
    prepare.set_defaults(action=run_prepare)
    stats = data.add_parser("stats", help="counts, label balance, token lengths, truncation")
    stats.add_argument("--datasets", default="all")
    stats.add_argument("--tokenizer", default="smollm2-135m", help="model name whose tokenizer counts tokens")
    stats.add_argument(
        "--max_length", type=int, default=None, help="default: each protocol's (hira: 256; math 155, dialogue 512)"
    )
    add_data_dir(stats)
    stats.set_defaults(action=run_stats)


def run_list(args: argparse.Namespace) -> None:
    from peftbench.data.registry import ALL_DATASETS
    from peftbench.data.sources import load_test_examples

    for spec in ALL_DATASETS:
        if spec.training_only:
            found = "training set"
        else:
            try:
                loaded = load_test_examples(spec.name, args.data_dir)
                found = f"{len(loaded.examples)} test examples from {', '.join(loaded.origins)}"
            except UserError as exc:
                found = str(exc)
        print(f"{spec.name:15s} {spec.task:11s} aliases={','.join(spec.aliases) or '-':28s} {found}")


def run_prepare(args: argparse.Namespace) -> None:
    from peftbench.data.registry import resolve_names
    from peftbench.data.tools import prepare

    prepare(Path(args.out), resolve_names(args.datasets), args.data_dir)
    print(f"written: {args.out} (use it as --data_dir)")


def run_stats(args: argparse.Namespace) -> None:
    from peftbench.data.registry import resolve_names
    from peftbench.data.tools import stats_rows
    from peftbench.models.load import load_tokenizer, resolve_model_path
    from peftbench.report.markdown import to_markdown

    tokenizer = load_tokenizer(resolve_model_path(args.tokenizer))
    print(to_markdown(stats_rows(resolve_names(args.datasets), args.data_dir, tokenizer, args.max_length)))
