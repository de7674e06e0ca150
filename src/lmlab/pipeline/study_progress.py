"""One line as each run of a study (ablation, sweep) starts and ends, so a long study is never silent."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class StudyProgress:
    """Counts the runs of a study and reports each start and end on `stream` (stderr: tables stay on stdout)."""

    def __init__(self, study: str, total: int, stream: TextIO | None = None) -> None:
        self.study, self.total, self.done = study, total, 0
        self.stream = stream or sys.stderr
        self._t0 = 0.0

    def start(self, label: str) -> None:
        """A run begins."""
        self._t0 = time.perf_counter()
        self._say(f"[{self.done + 1}/{self.total}] {self.study} {label}: training")

    def end(self, label: str, loss: float | None) -> None:
        """A run ended with final validation loss `loss`."""
        self.done += 1
        seconds = time.perf_counter() - self._t0
        shown = "-" if loss is None else f"{loss:.4f}"
        left = self.total - self.done
        self._say(f"[{self.done}/{self.total}] {self.study} {label}: val {shown} in {seconds:.1f} s; {left} to go")

    def skip(self, label: str, reason: str) -> None:
        """A run that could not start (an invalid point of a search space)."""
        self.done += 1
        self._say(
            f"[{self.done}/{self.total}] {self.study} {label}: skipped ({reason}); {self.total - self.done} to go"
        )

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
