"""What a study's drivers did, on disk in the study folder, and the lock that lets one driver at a time run it.

``<study>/journal.jsonl`` holds one line per submission (the step, its command, the engine's job id) and one per
end (state, exit status). A driver that died leaves its jobs running on a cluster; the next driver reads the
journal to follow those jobs instead of submitting them again, and to skip steps an earlier driver saw finish
(an evaluation or an analysis whose command and inputs have not changed since). ``<study>/driver.lock`` is held
(``flock``) while a driver runs: the kernel releases it when the driver dies, however it dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftbench.errors import UserError

JOURNAL_FILE, LOCK_FILE = "journal.jsonl", "driver.lock"
PRIVATE_FOLDER, PRIVATE_FILE = 0o700, 0o600


def private_folder(path: Path) -> Path:
    """A folder only its owner can read (logs, job scripts, the journal: commands and hosts of a shared cluster)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_FOLDER)
    return path


def append_private(path: Path, line: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    with os.fdopen(descriptor, "a", encoding="utf-8") as out:
        out.write(line)


class StudyJournal:
    def __init__(self, study_folder: Path) -> None:
        study_folder.mkdir(parents=True, exist_ok=True)
        self.path = study_folder / JOURNAL_FILE

    def submitted(self, step_id: str, command: str, engine: str, job_id: str, request: str = "") -> None:
        self._append({"event": "submitted", "step": step_id, "command": command, "engine": engine, "job": job_id,
                      "request": request})  # fmt: skip

    def ended(self, step_id: str, command: str, state: str, exit_status: int | None) -> None:
        self._append({"event": "ended", "step": step_id, "command": command, "state": state,
                      "exit_status": exit_status})  # fmt: skip

    def last_job(self, step_id: str, command: str, engine: str, request: str = "") -> str | None:
        """The job id of the step's newest submission with this command and request on this engine, unless the
        step has ended since."""
        return self.unended_jobs(engine).get((step_id, command, request))

    def unended_jobs(self, engine: str) -> dict[tuple[str, str, str], str]:
        """(step, command, request) -> job id of every step's newest submission on this engine that no driver saw
        end: jobs that may still be queued or running."""
        jobs: dict[str, tuple[tuple[str, str, str], str]] = {}
        for entry in self._entries():
            if entry["event"] == "submitted" and entry["engine"] == engine:
                jobs[entry["step"]] = ((entry["step"], entry["command"], entry.get("request", "")), entry["job"])
            elif entry["event"] == "ended":
                jobs.pop(entry["step"], None)
        return dict(jobs.values())

    def finished_after_needs(self, step_id: str, command: str, needs: tuple[str, ...]) -> bool:
        """Whether the step's newest entry is a successful end with this command, written after every entry of
        the steps it needs (an input redone, or submitted again, since then means it must run again)."""
        newest: dict[str, tuple[int, dict[str, Any]]] = {}
        for index, entry in enumerate(self._entries()):
            newest[entry["step"]] = (index, entry)
        if step_id not in newest:
            return False
        index, entry = newest[step_id]
        succeeded = entry["event"] == "ended" and entry["state"] == "finished" and entry["command"] == command
        return succeeded and all(newest.get(need, (-1, None))[0] < index for need in needs)

    def _append(self, entry: dict[str, Any]) -> None:
        # After a line cut short (a driver killed while writing, a full disk), start on a line of its own.
        append_private(self.path, "\n" * _ends_mid_line(self.path) + json.dumps(entry) + "\n")

    def _entries(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # the last line of a driver killed while writing it
                continue


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as journal:
            journal.seek(-1, os.SEEK_END)
            return journal.read(1) != b"\n"
    except OSError:  # no journal yet, or an empty one
        return False


@contextmanager
def driver_lock(study_folder: Path) -> Iterator[None]:
    """Hold the study's lock for the block, or refuse with one line naming the driver that holds it."""
    study_folder.mkdir(parents=True, exist_ok=True)
    path = study_folder / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"another driver ({holder}) is running the study in {study_folder}; wait for it, or stop it "
                "(Ctrl-C or kill) and rerun"
            ) from None
        except OSError as exc:  # a filesystem without flock (Lustre mounted noflock)
            raise UserError(f"cannot lock {path} ({exc}): put the study folder on a filesystem with flock") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
