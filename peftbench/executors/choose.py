"""``--executor``: the executor a study runs on, built from its flags."""

from __future__ import annotations

import dataclasses
from typing import Any

from peftbench.errors import UserError
from peftbench.executors.base import Executor
from peftbench.studies.design import SlurmSettings


def choose_executor(
    kind: str, workers: int | None, gpus: str | None, ray_address: str | None, slurm: SlurmSettings,
    slurm_flags: dict[str, Any], gpu_study: bool,
) -> Executor:  # fmt: skip
    """The executor of ``--executor``; Slurm's settings are the study file's, overridden by the flags given."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if kind == "local" and gpu_study and (workers or 1) > 1 and not gpus:
        raise UserError(f"--workers {workers} would put {workers} GPU steps on one GPU, each planning for all of "
                        "its memory; give one GPU per step: --gpus 0,1,...")  # fmt: skip
    if kind == "ray":
        from peftbench.executors.ray_cluster import RayExecutor

        return RayExecutor(ray_address, workers)
    if kind == "slurm":
        from peftbench.executors.slurm import SlurmExecutor

        given = {k: v for k, v in slurm_flags.items() if v not in (None, [])}
        settings = dataclasses.replace(slurm, **{k: v for k, v in given.items() if k != "sbatch"})
        settings = dataclasses.replace(settings, sbatch=(*settings.sbatch, *given.get("sbatch", ())))
        return SlurmExecutor(settings, workers)
    from peftbench.executors.local import LocalExecutor

    return LocalExecutor(workers or 1, [gpu.strip() for gpu in (gpus or "").split(",") if gpu.strip()])
