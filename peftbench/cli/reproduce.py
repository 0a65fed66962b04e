"""``peftbench reproduce``: its flags mapped onto peftbench.reproduce.Reproduction."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from peftbench.cli.flags import add_data_dir, build_config
from peftbench.config.checks import TRACKERS


def add_to(commands: Any) -> None:
    reproduce = commands.add_parser(
        "reproduce", help="a whole study: zero-shot and every method trained, evaluated, analysed; a results page"
    )
    shipped = "a study file, or a shipped study: cpu-small (default), paper, hira-llama2-7b, hira-llama3-8b"
    reproduce.add_argument("study", nargs="?", default=None, help=shipped)
    reproduce.add_argument("--preset", default=None, help="the same as the study argument (a shipped study's name)")
    reproduce.add_argument("--seeds", type=int, default=None, help="train over this many seeds (36, 37, ...)")
    reproduce.add_argument("--methods", default=None, help="comma-separated methods of the study (default: its own)")
    overrides = reproduce.add_argument_group("overrides of the study file (a smoke test in one line)")
    overrides.add_argument("--model_name", default=None)
    overrides.add_argument("--max_train_samples", type=int, default=None)
    overrides.add_argument("--max_eval_samples", type=int, default=None)
    overrides.add_argument("--datasets", default=None, help="benchmarks: a name, a comma-separated list, or all")
    overrides.add_argument("--eval_modes", default=None, help="comma-separated: generate, loglik")
    reproduce.add_argument("--report_to", default="none", choices=TRACKERS,
                           help="tracker for training runs and their evaluations (the Trainer's)")  # fmt: skip
    reproduce.add_argument("--out", default=None, help="study folder; default reproduce_<study>")
    reproduce.add_argument("--page", default=None, help="results page; default docs/results/<study>.md")
    reproduce.add_argument("--dry_run", action="store_true", help="print the plan and its commands; run nothing")
    reproduce.add_argument(
        "--render_only", action="store_true", help="rewrite the page and plots from its summary.json; run nothing"
    )
    reproduce.add_argument(
        "--note",
        action="append",
        default=[],
        help="a sentence the page shows under its title (repeatable); with --render_only, replaces the summary's notes",
    )
    engines = reproduce.add_argument_group("where the steps run")
    engines.add_argument("--executor", default="local", choices=("local", "ray", "slurm"))
    engines.add_argument("--workers", type=int, default=None, help="steps at once (local; Ray's local CPUs)")
    engines.add_argument("--gpus", default=None, help="local: one step per GPU at once, e.g. 0,1,2,3")
    engines.add_argument("--ray_address", default=None, help="join this Ray cluster (default: a local one)")
    engines.add_argument("--slurm_partition", default=None)
    engines.add_argument("--slurm_time_min", type=int, default=None, help="time limit of each job (default 24 h)")
    engines.add_argument("--slurm_cpus_per_job", type=int, default=None, help="CPUs of each job (default 8)")
    engines.add_argument("--slurm_mem_gb_per_job", type=int, default=None,
                         help="memory of each job in GB (default: the cluster's)")  # fmt: skip
    engines.add_argument("--slurm_gpus_per_job", type=int, default=None, help="GPUs of each GPU step (default 1)")
    engines.add_argument("--slurm_sbatch", action="append", default=[],
                         help="an sbatch option, e.g. --slurm_sbatch=--account=abc (repeatable)")  # fmt: skip
    add_data_dir(reproduce)
    reproduce.set_defaults(action=run)


def run(args: argparse.Namespace) -> None:
    from peftbench.reproduce import Reproduction, reproduce

    command = shlex.join(["peftbench", "reproduce", *sys.argv[2:]]) if sys.argv[1:2] == ["reproduce"] else ""
    reproduce(build_config(Reproduction, args), command)
