"""A whole study reproduced: the study chosen and overridden, its steps run on an executor, its results page.

``peftbench reproduce`` maps its flags onto :class:`Reproduction` and calls :func:`reproduce`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from peftbench.config import default_data_dir
from peftbench.errors import UserError
from peftbench.executors.base import DONE_BEFORE, FINISHED
from peftbench.executors.choose import choose_executor
from peftbench.executors.driver import run_study
from peftbench.studies.design import SlurmSettings
from peftbench.studies.loader import SHIPPED, load_study
from peftbench.studies.page import rewrite_page, write_results
from peftbench.studies.plan import Study, check_device, describe, seeds_for


@dataclasses.dataclass
class Reproduction:
    """What to reproduce, where, and how (each field is a flag of ``peftbench reproduce``)."""

    study: str | None = None  # a study file or a shipped study's name (default cpu-small)
    preset: str | None = None  # the same as study; give one of the two
    seeds: int | None = None  # train over this many seeds (default: the study's)
    methods: str | None = None  # comma-separated methods of the study (default: its own)
    # overrides of the study file
    model_name: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    datasets: str | None = None
    eval_modes: str | None = None
    report_to: str = "none"
    out: str | None = None  # study folder; default reproduce_<study>
    page: str | None = None  # results page; default docs/results/<study>.md for an unchanged shipped study
    dry_run: bool = False  # print the plan and its commands; run nothing
    render_only: bool = False  # rewrite the page and plots from its summary.json; run nothing
    note: list[str] = dataclasses.field(default_factory=list)  # sentences the page shows under its title
    # where the steps run
    executor: str = "local"  # local, ray or slurm
    workers: int | None = None
    gpus: str | None = None
    ray_address: str | None = None
    slurm_partition: str | None = None
    slurm_time_min: int | None = None
    slurm_cpus_per_job: int | None = None
    slurm_mem_gb_per_job: int | None = None
    slurm_gpus_per_job: int | None = None
    slurm_sbatch: list[str] = dataclasses.field(default_factory=list)
    data_dir: str = dataclasses.field(default_factory=default_data_dir)


def reproduce(request: Reproduction, command: str = "") -> None:
    """Run (or with dry_run describe, with render_only re-render) a study and write its results page.

    ``command`` is the shell command that asked for it, shown on the page ('' when unknown). Raises UserError
    when a step did not finish (no page is written then).
    """
    if request.study is not None and request.preset is not None:
        raise UserError(f"give the study once: {request.study} or --preset {request.preset}")
    design = load_study(request.study or request.preset or "cpu-small")
    overrides = (request.model_name, request.max_train_samples, request.max_eval_samples, request.datasets,
                 request.eval_modes)  # fmt: skip
    design = design.with_overrides(*overrides)
    shipped = Path(design.source).parent == SHIPPED and not any(o is not None for o in overrides)
    out, data_dir = Path(request.out or f"reproduce_{design.name}"), request.data_dir
    if request.executor != "local":  # the steps run in other working directories, maybe on other nodes
        out, data_dir = out.resolve(), ",".join(str(Path(d).resolve()) for d in data_dir.split(","))
    page = Path(request.page or (f"docs/results/{design.name}.md" if shipped else out / f"{design.name}.md"))
    if request.render_only:
        print(f"results page: {rewrite_page(page, request.note)}")
        return
    seeds = seeds_for(design.seeds if request.seeds is None else request.seeds)
    study = Study(design, out, seeds, data_dir, design.choose_methods(request.methods), request.report_to)
    if request.dry_run:
        print(describe(study))
        return
    slurm = {field.name: getattr(request, f"slurm_{field.name}") for field in dataclasses.fields(SlurmSettings)}
    executor = choose_executor(request.executor, request.workers, request.gpus, request.ray_address, design.slurm,
                               slurm, design.needs_gpu)  # fmt: skip
    if request.executor == "local" and not request.gpus:
        check_device(design)
    outcomes, wall_time = run_study(study, executor, command or "the same peftbench reproduce command")
    unfinished = [o for o in outcomes if o.state not in (FINISHED, DONE_BEFORE)]
    if unfinished:
        raise UserError(f"{len(unfinished)} of {len(outcomes)} steps did not finish (summary above); no results page")
    print(f"results page: {write_results(study, page, command, wall_time, request.note)}")
