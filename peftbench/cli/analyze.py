"""``peftbench analyze``: the accuracy table, statistics, plots and report over evaluation results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_to(commands: Any) -> None:
    parser = commands.add_parser("analyze", help="accuracy table over evaluation results")
    parser.add_argument("results", nargs="+", help="folders searched for output_*_eval.jsonl")
    parser.add_argument("--out", default="results_analysis", help="where the tables, plots and report go")
    parser.add_argument("--mode", default="generate", choices=("generate", "loglik"), help="which results to use")
    parser.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.report.analysis import analyze

    out = Path(args.out)
    print(analyze([Path(p) for p in args.results], out, args.mode))
    print(f"written to {out}: {', '.join(sorted(path.name for path in out.iterdir() if path.is_file()))}")
