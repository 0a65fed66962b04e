"""A step's process hears SIGTERM when the process that started it dies (Linux)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

STEP = """
import pathlib, signal, sys, time
from peftbench.executors.parent import stop_with_parent
stop_with_parent()
signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path(sys.argv[1]).write_text("SIGTERM"), sys.exit(0)))
print("ready", flush=True)
time.sleep(60)
"""
# The driver: starts the step with its own pid named, as run_command does, and waits.
DRIVER = f"""
import os, subprocess, sys
step = subprocess.Popen([sys.executable, "-c", {STEP!r}, sys.argv[1]], stdout=sys.stdout,
                        env={{**os.environ, "PEFTBENCH_STEP_PARENT": str(os.getpid())}})
step.wait()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_step_whose_driver_is_killed_hears_sigterm(tmp_path) -> None:
    heard = tmp_path / "heard"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(heard)], stdout=subprocess.PIPE, text=True)
    assert driver.stdout.readline() == "ready\n"
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 30
    while not heard.exists():
        assert time.monotonic() < deadline, "the orphaned step never heard SIGTERM"
        time.sleep(0.05)
    assert heard.read_text() == "SIGTERM"
