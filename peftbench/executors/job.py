"""The program a Slurm job runs: the step's peftbench command, its output appended to the step's log, and then
its exit status written beside the job script, for a driver that looks after Slurm has forgotten the job.

    python -m peftbench.executors.job STATUS_FILE LOG -- train --peft_type lora ...

A requeued job (preemption, ``scontrol requeue``) runs this again from the start: the training resumes from its
newest checkpoint in the same run folder (the study's trainings run with ``--resume``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from peftbench.executors.base import RUNNING, run_command
from peftbench.executors.journal import PRIVATE_FILE


def _pass_on(signum: int, frame: object) -> None:
    """Slurm signals every process of a job it cancels or requeues; where only this one is signalled (a site's
    preemption script, ``scancel --batch``), the step hears it too and a training saves its checkpoint."""
    for child in list(RUNNING):
        child.send_signal(signum)


def main(argv: list[str]) -> int:
    status_file, log, separator, *command = argv
    if separator != "--":
        raise SystemExit("usage: python -m peftbench.executors.job STATUS_FILE LOG -- COMMAND...")
    signal.signal(signal.SIGTERM, _pass_on)
    status = run_command(command, log, {})
    job = os.environ.get("SLURM_JOB_ID")
    written = {"job": job, "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "exit_status": status}
    try:  # Slurm's own record is what the driver reads first: this one is for after Slurm forgot the job
        partial = Path(f"{status_file}.{job}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(json.dumps(written) + "\n")
        partial.replace(status_file)
    except OSError as exc:
        print(f"peftbench: could not write the exit status to {status_file}: {exc}", file=sys.stderr)
    return 0 if status == 0 else (status if status > 0 else 128 - status)  # -15 (killed by SIGTERM) exits 143


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
