"""The study's journal and its driver lock."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from peftbench.errors import UserError
from peftbench.executors.journal import StudyJournal, driver_lock


def test_the_journal_gives_the_job_to_follow_until_the_step_ends_and_what_finished(tmp_path) -> None:
    journal = StudyJournal(tmp_path)
    journal.submitted("a.train", "peftbench train --lr 1", "slurm", "11")
    journal.submitted("b.eval", "peftbench eval", "slurm", "12")
    assert journal.last_job("a.train", "peftbench train --lr 1", "slurm") == "11"
    assert journal.last_job("a.train", "peftbench train --lr 2", "slurm") is None  # another command
    assert journal.last_job("a.train", "peftbench train --lr 1", "ray") is None
    journal.ended("a.train", "peftbench train --lr 1", "finished", 0)
    journal.ended("b.eval", "peftbench eval", "failed", 2)
    assert journal.last_job("a.train", "peftbench train --lr 1", "slurm") is None
    assert journal.finished_after_needs("a.train", "peftbench train --lr 1", ())
    assert not journal.finished_after_needs("b.eval", "peftbench eval", ("a.train",))  # it failed
    with open(journal.path, "a") as out:
        out.write('{"event": "subm')  # a driver killed while writing
    journal.ended("b.eval", "peftbench eval", "finished", 0)
    assert StudyJournal(tmp_path).finished_after_needs("b.eval", "peftbench eval", ("a.train",))
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600


def test_a_step_finished_before_its_input_was_submitted_again_is_not_finished(tmp_path) -> None:
    journal = StudyJournal(tmp_path)
    journal.ended("a.train", "train --lr 1", "finished", 0)
    journal.ended("a.eval", "eval", "finished", 0)
    assert journal.finished_after_needs("a.eval", "eval", ("a.train",))
    journal.submitted("a.train", "train --lr 2", "slurm", "12", "--time=60")  # a new training, its driver died
    assert journal.unended_jobs("slurm") == {("a.train", "train --lr 2", "--time=60"): "12"}
    assert not journal.finished_after_needs("a.eval", "eval", ("a.train",))
    assert not journal.finished_after_needs("a.eval", "eval --other", ())  # another command


def test_a_second_driver_is_refused_with_the_first_ones_pid_and_the_lock_dies_with_its_holder(tmp_path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", f"""
from pathlib import Path
from peftbench.executors.journal import driver_lock
with driver_lock(Path({str(tmp_path)!r})):
    print("held", flush=True)
    input()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(UserError, match=rf"another driver \(pid {holder.pid} on .*\) is running the study in"):
        with driver_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    with driver_lock(tmp_path):  # the kernel released it
        pass
