"""A Ray cluster of two nodes started as separate processes on this machine (``ray start --head`` and ``ray start
--address``), as a user's cluster is; the studies join it with ``--ray_address``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_mirror import free_port

RAY = str(Path(sys.executable).parent / "ray")
CANARIES = {"HF_TOKEN": "hf_canaryTOKEN4242", "WANDB_API_KEY": "wandbcanary4242"}  # credentials no file may hold


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    # Ray's sockets live in its temporary folder, whose path must stay short (107 bytes): not pytest's.
    temp, home = tempfile.mkdtemp(prefix="ray"), tempfile.mkdtemp(prefix="rayhome")
    environment, port = {**os.environ, "HOME": home}, free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                        *common], env=environment, check=True, capture_output=True, timeout=180)  # fmt: skip
        subprocess.run([RAY, "start", f"--address={address}", *common], env=environment, check=True,
                       capture_output=True, timeout=180)  # fmt: skip
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=environment, capture_output=True, timeout=180)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
