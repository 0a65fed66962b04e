"""What the benchmarks share: their model geometries, dtypes, device, and a scratch folder that is the cache."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from peftbench.models.geometry import gpt_neo_geometry
from peftbench.models.load import resolve_model_path

BENCH_MODELS: dict[str, Callable[[], PretrainedConfig]] = {
    "neo-6l": lambda: gpt_neo_geometry(6),
    "neo-1.3b": lambda: gpt_neo_geometry(24),
    "smollm2-135m": lambda: AutoConfig.from_pretrained(resolve_model_path("smollm2-135m")),
}
BENCH_TOTAL_STEPS = 1000  # AdaLoRA's schedule: its rank allocation runs (warm-up phase) but prunes nothing
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder that is also the peftbench cache (tokenized data) until the block ends."""
    previous = os.environ.get("PEFTBENCH_CACHE")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["PEFTBENCH_CACHE"] = str(Path(folder, "cache"))
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("PEFTBENCH_CACHE")
            else:
                os.environ["PEFTBENCH_CACHE"] = previous


def step_seconds(run_dir: Path) -> list[float]:
    """Seconds of each optimizer step after the first, from a run logged every step (``--logging_steps 1``)."""
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    elapsed = [entry["elapsed_s"] for entry in history if "loss" in entry]
    return [later - earlier for earlier, later in itertools.pairwise(elapsed)]
