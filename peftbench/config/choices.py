"""The choices and defaults that several settings share (training, evaluation, studies)."""

from __future__ import annotations

import os
from typing import Any

ZERO_SHOT = "zero-shot"  # the method label of a base model evaluated without training


EVAL_MODES = ("generate", "loglik")


BAD_RECORD_MODES = ("skip", "error")


# The official HiRA code keeps its LLM-Adapters files here; PEFTBENCH_DATA_DIR overrides it.
DEFAULT_DATA_DIR = "data_file/llm_adapt"


def default_data_dir() -> str:
    return os.environ.get("PEFTBENCH_DATA_DIR", DEFAULT_DATA_DIR)


def flag_help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


HUB_REVISIONS_HELP = (
    "Read these hub repositories (datasets and models) at these revisions: org/name=REVISION,... (a commit, branch "
    "or tag). Default: a dataset's registry revision, else main; each is resolved to its commit and recorded."
)
