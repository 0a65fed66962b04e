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
import sys
from collections.abc import Sequence

from peftbench.cli import analyze, bench, data, demo, doctor, evaluate, export, published, reproduce, train
from peftbench.cli.flags import OneLineErrorParser, run_guarded, setup_logging
from peftbench.executors.parent import stop_with_parent

# Each module adds its command (flags and action); `peftbench --help` lists them in this order.
COMMANDS = (train, evaluate, analyze, export, data, bench, reproduce, demo, published, doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="peftbench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_to(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    stop_with_parent()  # a study's step: SIGTERM when its driver dies
    args = build_parser().parse_args(argv)
    setup_logging()
    return run_guarded(lambda: args.action(args))


if __name__ == "__main__":
    sys.exit(main())
