"""``peftbench published``: published commonsense results, each with its source."""

from __future__ import annotations

import argparse
from typing import Any

from peftbench.errors import UserError


def add_to(commands: Any) -> None:
    parser = commands.add_parser("published", help="published commonsense results with their sources")
    parser.add_argument("--model", default=None, help="e.g. meta-llama/Llama-2-7b-hf or Llama-2-7B")
    parser.add_argument("--source", default=None, help="one table: hira_iclr2025_table1, dora_commonsense, ...")
    parser.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.published import format_rows, published_rows

    rows = published_rows(args.source, args.model)
    if not rows:
        raise UserError(f"no published row for model {args.model!r}" + (f" in {args.source}" if args.source else ""))
    print(format_rows(rows))
