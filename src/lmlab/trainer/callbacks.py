"""Trainer callbacks: hooks the trainer calls, and the ones lmlab ships."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from lmlab.registry import CALLBACK


class Callback:
    """Override any hook; each receives the trainer and, where relevant, the latest metrics."""

    def on_train_start(self, trainer: Any) -> None:
        """Before the first step (after any resume)."""

    def on_batch_end(self, trainer: Any, metrics: dict) -> None:
        """After each optimizer step."""

    def on_eval_end(self, trainer: Any, metrics: dict) -> None:
        """After each evaluation."""

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        """After each pass over the training loader."""

    def on_checkpoint(self, trainer: Any, path: Path) -> None:
        """After a checkpoint is written."""

    def on_train_end(self, trainer: Any) -> None:
        """After the last step."""


@CALLBACK.register("progress")
class ProgressBar(Callback):
    """A rich progress bar with loss, tokens/s, MFU and ETA; plain lines when not on a terminal."""

    def __init__(self, log_interval: int = 10) -> None:
        self.log_interval = log_interval
        self.progress = None

    def on_train_start(self, trainer: Any) -> None:
        """Open the bar at the resumed step."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if sys.stderr.isatty():
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=trainer.total_steps, completed=trainer.step, info="")
        self.t0 = time.perf_counter()

    def on_batch_end(self, trainer: Any, metrics: dict) -> None:
        """Refresh every `log_interval` steps."""
        if trainer.step % self.log_interval and trainer.step != trainer.total_steps:
            return
        info = f"loss {metrics['loss']:.4f} | {metrics['tokens_per_s']:,.0f} tok/s"
        if metrics.get("mfu") is not None:
            info += f" | MFU {100 * metrics['mfu']:.1f}%"
        if self.progress is not None:
            self.progress.update(self.task, completed=trainer.step, info=info)
        else:
            eta = (
                (time.perf_counter() - self.t0)
                / max(1, trainer.step - trainer.start_step)
                * (trainer.total_steps - trainer.step)
            )
            print(f"step {trainer.step}/{trainer.total_steps} | {info} | eta {eta:.0f}s", file=sys.stderr, flush=True)

    def on_eval_end(self, trainer: Any, metrics: dict) -> None:
        """Print the validation loss above the bar."""
        line = f"step {trainer.step}: val loss {metrics['val_loss']:.4f}"
        if self.progress is not None:
            self.progress.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_train_end(self, trainer: Any) -> None:
        """Close the bar."""
        if self.progress is not None:
            self.progress.stop()
