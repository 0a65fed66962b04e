"""Shared fixtures: tiny random models saved as local folders, and the shared benchmark data."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# No network here: the hub must answer "offline" at once instead of retrying (subprocesses inherit this).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tokenized sets, converted models, Hugging Face and matplotlib caches go to a temporary folder, never the
# user's ~/.cache; set before any library is imported, which reads them once.
CACHES = Path(tempfile.mkdtemp(prefix="peftbench-test-caches-"))
atexit.register(shutil.rmtree, CACHES, ignore_errors=True)
for variable, folder in (("PEFTBENCH_CACHE", "peftbench"), ("HF_HOME", "huggingface"), ("MPLCONFIGDIR", "mpl")):
    os.environ[variable] = str(CACHES / folder)

from ray_processes import ray_address  # noqa: E402, F401 -- a fixture: a Ray cluster of `ray start` processes
from tiny import DATA_DIR, LLM_ADAPTERS, make_model_dir  # noqa: E402 -- after the caches are chosen


def pytest_configure(config: pytest.Config) -> None:
    if not LLM_ADAPTERS.is_dir():
        raise pytest.UsageError(f"benchmark data not found at {LLM_ADAPTERS} (the shared/ folder beside the checkout)")


@pytest.fixture(scope="session")
def data_dir() -> str:
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_neo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-Neo geometry (the specification's model family), hidden size 64, two layers."""
    return make_model_dir(tmp_path_factory.mktemp("tiny_neo"), "gpt_neo")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama geometry (the embedded SmolLM2's family), hidden size 64, two layers."""
    return make_model_dir(tmp_path_factory.mktemp("tiny_llama"), "llama")
