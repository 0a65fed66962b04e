"""Where peftbench keeps what it can rebuild (tokenized sets, converted models, resolved hub commits)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("PEFTBENCH_CACHE", Path.home() / ".cache" / "peftbench"))
