"""Run folders on disk: their names, the checkpoint a path means, and where an interrupted run resumes.

A run folder holds ``output.jsonl`` (``records``) and ``checkpoint-N`` folders, complete once their
``trainer_state.json`` exists (the Trainer writes it last).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.runs.records import RUN_RECORD, load_run_config, read_records

logger = logging.getLogger(__name__)

# May differ between a run and its resumption (the micro-batch changes how a step runs, not what it computes).
RESUME_FIELDS = ("resume", "resume_from_checkpoint", "micro_batch", "report_to")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder; a run folder gives its best checkpoint, a results folder its newest run's."""
    if not path.exists():
        raise UserError(f"--ckpt {path} does not exist")
    if not path.is_dir():
        raise UserError(f"--ckpt {path} is a file; give a checkpoint-N folder, a run folder or a results folder")
    if (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return path
    record = path / RUN_RECORD
    if record.is_file():
        ends = [line for line in read_records(record) if line.get("event") == "train_end"]
        if not ends:
            raise UserError(f"{path} is a run that did not finish training: pass one of its checkpoint-N folders")
        # By name inside this run folder, so results stay usable after the folder is moved.
        return path / Path(ends[-1]["best_checkpoint"]).name
    runs = sorted((p for p in path.iterdir() if (p / RUN_RECORD).is_file()), key=lambda p: p.stat().st_mtime)
    if runs:
        return resolve_checkpoint(runs[-1])
    raise UserError(f"--ckpt {path} is neither a checkpoint, a run folder with {RUN_RECORD}, nor a folder of runs")


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def make_run_dir(config: RunConfig) -> Path:
    """A new folder; a second run started in the same second gets a suffix instead of sharing it."""
    base = Path(config.output_folder).resolve() / config.run_folder_name(timestamp())
    candidate, suffix = base, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-N folders whose save finished, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration as this version would write it (a field added since takes its default), its folders
    absolute: a study continued on a cluster names them absolutely where it named them relatively here."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
    comparable = {k: v for k, v in {**defaults, **config}.items() if k not in RESUME_FIELDS}
    comparable["output_folder"] = os.path.abspath(comparable["output_folder"])
    comparable["data_dir"] = ",".join(os.path.abspath(d) for d in str(comparable.get("data_dir", "")).split(","))
    return comparable


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path
    checkpoint: Path | None  # None: start at step 0 (a new run, or one that never completed a checkpoint)
    resumed: bool = True


def find_resume_point(config: RunConfig) -> ResumePoint | None:
    """The run to continue: --resume_from_checkpoint PATH names it; 'auto' (--resume) takes the newest
    unfinished run of this exact configuration in the output folder. None: nothing to resume."""
    wanted = _comparable(dataclasses.asdict(config))
    if config.resume_from_checkpoint not in (None, "auto"):
        checkpoint = Path(config.resume_from_checkpoint).resolve()
        if not (checkpoint / "trainer_state.json").is_file():
            raise UserError(
                f"--resume_from_checkpoint {checkpoint} is not a complete checkpoint (no trainer_state.json)"
            )
        saved = _comparable(dataclasses.asdict(load_run_config(checkpoint)))
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        if changed:
            raise UserError(f"cannot resume {checkpoint}: its run had different {', '.join(changed)}")
        return ResumePoint(checkpoint.parent, checkpoint)
    if config.resume_from_checkpoint is None:
        return None
    unfinished = [run_dir for run_dir, finished in runs_of(config) if not finished]
    if not unfinished:
        return None
    run_dir = unfinished[-1]
    checkpoints = complete_checkpoints(run_dir)
    return ResumePoint(run_dir, checkpoints[-1] if checkpoints else None)


def runs_of(config: RunConfig) -> list[tuple[Path, bool]]:
    """Run folders of this exact configuration in its output folder, oldest first, and whether each finished."""
    wanted = _comparable(dataclasses.asdict(config))
    found = []
    for record in sorted(Path(config.output_folder).resolve().glob(f"{config.run_folder_name('*')}/{RUN_RECORD}")):
        lines = read_records(record)  # timestamps in the folder names sort oldest first
        if lines and _comparable(lines[0].get("config", {})) == wanted:
            found.append((record.parent, any(line.get("event") == "train_end" for line in lines)))
    return found


def find_finished_run(config: RunConfig) -> Path | None:
    """The newest run of this exact configuration that finished training, if any."""
    finished = [run_dir for run_dir, done in runs_of(config) if done]
    return finished[-1] if finished else None


def choose_run_folder(config: RunConfig, state: PartialState) -> ResumePoint:
    """Where this run writes: the run to resume, or a new folder. Process 0 decides and creates it
    and every process (torchrun / accelerate launch) receives its answer."""
    chosen = [None]
    if state.is_main_process:
        chosen[0] = find_resume_point(config) or ResumePoint(make_run_dir(config), None, resumed=False)
    if state.num_processes > 1:
        broadcast_object_list(chosen)
    return chosen[0]
