"""``peftbench bench study``: one tiny study's wall time on the local executor with 1 and with N workers, side by
side in one run (each in a fresh folder and cache), and their ratio.

    peftbench bench study                                 # SmolLM2-135M, workers 1 and 2
    peftbench bench study --model path/to/model --workers 1,2,4 --out bench_study.json

The study is cpu-small cut down: LoRA and IA3, 2 seeds, 16 training examples, 4 log-likelihood questions on
BoolQ and PIQA (11 steps: 1 zero-shot evaluation, 4 trainings, 4 evaluations, 2 analyses).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from peftbench.bench.common import scratch_folder
from peftbench.errors import UserError
from peftbench.executors.base import DONE_BEFORE, FINISHED
from peftbench.executors.driver import run_study
from peftbench.executors.local import LocalExecutor
from peftbench.models.load import resolve_model_path
from peftbench.runs.records import environment_record
from peftbench.studies.loader import load_study
from peftbench.studies.plan import Study, seeds_for


def bench_study(model: str, workers: list[int], data_dir: str, out: Path | None) -> dict[str, Any]:
    design = load_study("cpu-small").with_overrides(
        model_name=model, max_train_samples=16, max_eval_samples=4, datasets="boolq,piqa", eval_modes="loglik"
    )
    seconds = {}
    for count in workers:
        with scratch_folder() as folder:
            resolve_model_path(model)  # an embedded model is converted once, before the clock starts
            study = Study(design, folder / "study", seeds_for(2), data_dir, design.choose_methods("lora,ia3"))
            began = time.perf_counter()
            outcomes, _ = run_study(study, LocalExecutor(count), "")
            seconds[count] = round(time.perf_counter() - began, 1)
            if any(outcome.state not in (FINISHED, DONE_BEFORE) for outcome in outcomes):
                raise UserError(f"the bench study did not finish with {count} workers (summary above)")
    first = workers[0]
    report = {
        "model": model,
        "steps": len(outcomes),
        "wall_time_s": {str(count): s for count, s in seconds.items()},
        "speedup": {str(count): round(seconds[first] / s, 3) for count, s in seconds.items()},
        "environment": environment_record(),
    }
    for count, s in seconds.items():
        print(f"{count} worker(s): {s:.1f} s  ({seconds[first] / s:.2f}x of {first})")
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
    return report
