"""``peftbench export``: a checkpoint's adapter merged into its base model, saved as a transformers model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_to(commands: Any) -> None:
    parser = commands.add_parser("export", help="merge a checkpoint's adapter into its base model and save it")
    parser.add_argument("--ckpt", required=True, help="checkpoint, run or results folder")
    parser.add_argument("--out", required=True, help="folder for the merged transformers model")
    parser.add_argument("--load_bit", type=int, default=32, choices=(16, 32))
    parser.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.runs.checkpoint import export_merged

    print(f"written: {export_merged(Path(args.ckpt), Path(args.out), args.load_bit)}")
