"""The always-on tracker: one JSON object per line in logs/metrics.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmlab.registry import TRACKER
from lmlab.trainer.callbacks import Callback


@TRACKER.register("jsonl")
class JSONLLogger(Callback):
    """Appends train metrics every `log_interval` steps and every evaluation, tagged by split."""

    def __init__(self, path: str | Path, log_interval: int = 10) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_interval = log_interval

    @classmethod
    def for_run(cls, run: Any, cfg: Any) -> JSONLLogger:
        """The tracker for a run directory: `logs/metrics.jsonl`."""
        return cls(run.logs / "metrics.jsonl", cfg.train.log_interval)

    def on_train_start(self, trainer: Any) -> None:
        """On a resume, drop the rows a killed run wrote after its last checkpoint: the resumed run writes
        those steps again, and a curve must hold each step once."""
        if trainer.step == 0 or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= trainer.step]
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(partial, self.path)  # atomic: a kill now leaves the old file or the new one

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_batch_end(self, trainer: Any, metrics: dict) -> None:
        """Log training metrics every `log_interval` steps and at the last step."""
        if trainer.step % self.log_interval == 0 or trainer.step == trainer.total_steps:
            self._write({"split": "train", **metrics})

    def on_eval_end(self, trainer: Any, metrics: dict) -> None:
        """Log every evaluation."""
        self._write({"split": "val", **metrics})


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl file (a torn last line from a crash is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
