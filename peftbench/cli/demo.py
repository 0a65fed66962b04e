"""``peftbench demo``: the offline demo, HiRA on the embedded model, evaluated, a table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from peftbench.cli.flags import add_data_dir


def add_to(commands: Any) -> None:
    parser = commands.add_parser("demo", help="offline demo: HiRA on the embedded model, evaluate, table")
    parser.add_argument("--out", default="demo_results")
    add_data_dir(parser)
    parser.add_argument("--train_samples", type=int, default=256)
    parser.add_argument("--eval_samples", type=int, default=12)
    parser.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.demo import run_demo
    from peftbench.models.load import use_local_files_only

    use_local_files_only()  # the offline demo reads local files only

    run_demo(Path(args.out), args.data_dir, train_samples=args.train_samples, eval_samples=args.eval_samples)
