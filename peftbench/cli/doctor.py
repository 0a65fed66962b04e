"""``peftbench doctor``: this machine checked (GPU numerics, memory plan, DDP) in minutes."""

from __future__ import annotations

import argparse
from typing import Any

from peftbench.cli.flags import optional_path
from peftbench.errors import UserError


def add_to(commands: Any) -> None:
    parser = commands.add_parser("doctor", help="check this machine (GPU numerics, memory plan, DDP) in minutes")
    parser.add_argument("--out", default="", help="JSON report ('' for none)")
    parser.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.doctor import FAIL, doctor

    failed = [check.name for check in doctor(optional_path(args.out)) if check.status == FAIL]
    if failed:
        raise UserError(f"doctor: {', '.join(failed)} failed on this machine (see the lines above)")
