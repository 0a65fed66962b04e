"""A step's process stops when the process that started it dies.

A driver killed with -9, or a Ray worker killed with its driver, would otherwise leave its steps running as
orphans that a rerun duplicates (two trainings writing one run folder). ``run_command`` names its own pid in the
step's environment; the step, once started, asks Linux for SIGTERM when that parent goes (``PR_SET_PDEATHSIG``),
so a training saves its checkpoint and stops. Done in the step rather than between fork and exec, where a
process with threads must not run Python. Elsewhere than Linux an orphan runs to its end.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_VARIABLE = "PEFTBENCH_STEP_PARENT"
PR_SET_PDEATHSIG = 1  # prctl(2)


def stop_with_parent() -> None:
    parent = os.environ.pop(PARENT_VARIABLE, None)  # not passed on to the step's own children
    if parent is None or sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before the request: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)
