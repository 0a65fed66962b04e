"""Progress of an evaluation: questions done, questions per second and the time left, updated per batch.

Scores arrive a batch at a time (log-likelihood sorts each window of questions by length and yields them in
their order only when the window is done), so progress is counted where a batch ends, not where a result is
yielded. A terminal gets a tqdm bar; a log file (a study step's log, where stderr is not a terminal) gets a
line at most every ``interval`` seconds and one at the end, instead of a bar redrawn with carriage returns.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class Progress:
    """Counts questions as batches finish; ``update`` after each batch, ``close`` at the end."""

    def __init__(self, total: int, desc: str, interval: float = 15.0, terminal: bool | None = None) -> None:
        self.total, self.desc, self.interval = total, desc, interval
        self.done = 0
        self.start = self.last_line = time.perf_counter()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc=desc, unit="question", dynamic_ncols=True) if terminal else None

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.set_postfix_str(f"batch of {count}", refresh=False)
            self.bar.update(count)
        elif time.perf_counter() - self.last_line >= self.interval:
            self._log_line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done:
            self._log_line()

    def line(self) -> str:
        """'64/200 questions, 3.1 questions/s, 44 s left' as of now."""
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        return f"{self.done}/{self.total} questions, {rate:.2f} questions/s, {left:.0f} s left"

    def _log_line(self) -> None:
        self.last_line = time.perf_counter()
        logger.info("%s: %s", self.desc, self.line())
