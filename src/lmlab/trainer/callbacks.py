"""Trainer callbacks: hooks the trainer calls, and the ones lmlab ships."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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

    def on_before_optimizer_step(self, trainer: Any) -> None:
        """After the gradients are final (accumulated, unscaled, clipped), before the optimizer uses them."""

    def on_checkpoint(self, trainer: Any, path: Path) -> None:
        """After a checkpoint is written."""

    def on_train_end(self, trainer: Any) -> None:
        """After the last step."""


@dataclass
class Event:
    """What a plain-function callback receives with the trainer: the hook's name and its argument."""

    name: str  # train_start, batch_end, eval_end, epoch_end, before_optimizer_step, checkpoint, train_end
    data: Any = None  # the metrics, the epoch or the checkpoint path, where the hook has one


class FunctionCallback(Callback):
    """Every hook as one call `fn(trainer, Event(name, data))`."""

    def __init__(self, fn: Callable[[Any, Event], None]) -> None:
        self.fn = fn

    def on_train_start(self, trainer: Any) -> None:
        """Event train_start."""
        self.fn(trainer, Event("train_start"))

    def on_batch_end(self, trainer: Any, metrics: dict) -> None:
        """Event batch_end with the step's metrics."""
        self.fn(trainer, Event("batch_end", metrics))

    def on_eval_end(self, trainer: Any, metrics: dict) -> None:
        """Event eval_end with the evaluation's metrics."""
        self.fn(trainer, Event("eval_end", metrics))

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        """Event epoch_end with the epoch count."""
        self.fn(trainer, Event("epoch_end", epoch))

    def on_before_optimizer_step(self, trainer: Any) -> None:
        """Event before_optimizer_step."""
        self.fn(trainer, Event("before_optimizer_step"))

    def on_checkpoint(self, trainer: Any, path: Path) -> None:
        """Event checkpoint with the checkpoint's path."""
        self.fn(trainer, Event("checkpoint", path))

    def on_train_end(self, trainer: Any) -> None:
        """Event train_end."""
        self.fn(trainer, Event("train_end"))


def as_callback(cb: Callback | Callable[[Any, Event], None]) -> Callback:
    """A `Callback` as it is; a plain function `fn(trainer, event)` wrapped so it hears every hook."""
    if isinstance(cb, Callback):
        return cb
    if callable(cb):
        return FunctionCallback(cb)
    raise TypeError(f"callbacks: {cb!r} is neither a Callback nor a function fn(trainer, event)")


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
        if metrics.get("train_eval_loss") is not None:
            line += f" | train loss {metrics['train_eval_loss']:.4f}"
        if self.progress is not None:
            self.progress.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_train_end(self, trainer: Any) -> None:
        """Close the bar."""
        if self.progress is not None:
            self.progress.stop()


class EarlyStopping(Callback):
    """Stop when the validation loss has not improved by `min_delta` for `patience` evaluations."""

    def __init__(self, patience: int = 3, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best, self.bad_evals = float("inf"), 0

    def on_eval_end(self, trainer: Any, metrics: dict) -> None:
        """Count evaluations without improvement; ask the trainer to stop after `patience` of them."""
        if metrics["val_loss"] < self.best - self.min_delta:
            self.best, self.bad_evals = metrics["val_loss"], 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            trainer.should_stop = (
                f"early stopping: val loss has not improved on {self.best:.4f} for {self.patience} evaluations"
            )


class LayerStats(Callback):
    """Every `interval` steps, before the optimizer step: each layer's gradient norm, and its output RMS
    and attention entropy on the step's first training row, as `trainer.layer_stats` for the trackers.
    The extra forward runs without gradient or dropout and draws no random numbers, so a run with
    statistics trains exactly as one without."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def on_before_optimizer_step(self, trainer: Any) -> None:
        """Measure when the step being taken is due."""
        from lmlab.model.inspect import layer_stats

        trainer.layer_stats = None
        inputs = getattr(trainer, "last_inputs", None)
        if (trainer.step + 1) % self.interval or inputs is None:
            return
        trainer.layer_stats = layer_stats(trainer.raw_model, inputs[:1])


class LRMonitor(Callback):
    """Adds every parameter group's learning rate to the step metrics (`lr_group0`, `lr_group1`, ...)."""

    def on_batch_end(self, trainer: Any, metrics: dict) -> None:
        """Record the learning rates the next step will use."""
        for i, group in enumerate(trainer.optimizer.param_groups):
            metrics[f"lr_group{i}"] = group["lr"]


class LRDecay(Callback):
    """Multiply the learning rate by `factor` when the validation loss stops improving (floor `min_lr`).

    Works with or without a scheduler: with one, its base learning rates are scaled too, so the
    schedule continues from the decayed level.
    """

    def __init__(self, factor: float = 0.5, patience: int = 1, min_lr: float = 0.0) -> None:
        self.factor, self.patience, self.min_lr = factor, patience, min_lr
        self.best, self.bad_evals = float("inf"), 0

    def on_eval_end(self, trainer: Any, metrics: dict) -> None:
        """Decay after `patience` evaluations without improvement."""
        if metrics["val_loss"] < self.best:
            self.best, self.bad_evals = metrics["val_loss"], 0
            return
        self.bad_evals += 1
        if self.bad_evals < self.patience:
            return
        self.bad_evals = 0
        for i, group in enumerate(trainer.optimizer.param_groups):
            group["lr"] = max(self.min_lr, group["lr"] * self.factor)
            if trainer.scheduler is not None and hasattr(trainer.scheduler, "base_lrs"):
                trainer.scheduler.base_lrs[i] = max(self.min_lr, trainer.scheduler.base_lrs[i] * self.factor)
