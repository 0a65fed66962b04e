"""``peftbench published``: published results (commonsense, dialogue, math), one table per source."""

from __future__ import annotations

import argparse
from typing import Any

from peftbench.errors import UserError


def add_to(commands: Any) -> None:
    from peftbench.published import TASKS

    parser = commands.add_parser("published", help="published results with their sources, one table per source")
    parser.add_argument("--model", default=None, help="e.g. meta-llama/Llama-2-7b-hf or Llama-2-7B")
    parser.add_argument("--source", default=None, help="one table: hira_iclr2025_table1, dora_commonsense, ...")
    parser.add_argument("--task", default=None, choices=tuple(TASKS), help="only the sources of this task")
    parser.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.published import format_rows, published_rows

    rows = published_rows(args.source, args.model, args.task)
    if not rows:
        where = [f"for model {args.model!r}"] if args.model else []
        where += [f"in {args.source}"] if args.source else []
        where += [f"of task {args.task}"] if args.task else []
        raise UserError(" ".join(["no published row", *where]))
    print(format_rows(rows))
