"""``peftbench train``: one method trained, its flags those of RunConfig."""

from __future__ import annotations

import argparse
from typing import Any

from peftbench.cli.flags import add_config_flags, build_config
from peftbench.config import RunConfig


def add_to(commands: Any) -> None:
    parser = commands.add_parser("train", help="train one method")
    add_config_flags(parser, RunConfig)
    parser.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.train.recipe import train

    train(build_config(RunConfig, args))
