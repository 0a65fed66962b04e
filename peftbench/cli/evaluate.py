"""``peftbench eval``: a checkpoint or a base model on benchmarks, its flags those of EvalConfig."""

from __future__ import annotations

import argparse
from typing import Any

from peftbench.cli.flags import add_config_flags, build_config
from peftbench.config import EvalConfig


def add_to(commands: Any) -> None:
    parser = commands.add_parser("eval", help="evaluate a checkpoint or a base model on benchmarks ('all' for all)")
    add_config_flags(parser, EvalConfig)
    parser.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.evaluate.runner import evaluate

    evaluate(build_config(EvalConfig, args))
