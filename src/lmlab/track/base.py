"""Fail-safe tracker base: an error inside a tracking library warns once and disables that tracker."""

from __future__ import annotations

import sys
from typing import Any

from lmlab.trainer.callbacks import Callback


class SafeTracker(Callback):
    """Subclasses implement start/log_step/log_eval/log_grads/finish; any exception disables the tracker."""

    name = "tracker"

    def __init__(self) -> None:
        self.disabled = False

    def _guard(self, fn, *args: Any) -> None:
        if self.disabled:
            return
        try:
            fn(*args)
        except Exception as exc:
            self.disabled = True
            print(f"warning: {self.name} tracker disabled: {type(exc).__name__}: {exc}", file=sys.stderr)

    def start(self, trainer: Any) -> None:
        """Open the tracker's run."""

    def log_step(self, trainer: Any, metrics: dict) -> None:
        """Record one training step's metrics."""

    def log_eval(self, trainer: Any, metrics: dict) -> None:
        """Record one evaluation."""

    def log_grads(self, trainer: Any) -> None:
        """Record parameter/gradient distributions (called before the optimizer step)."""

    def log_layers(self, trainer: Any, stats: dict[str, float]) -> None:
        """Record per-layer statistics (`layer0/act_rms`, ...; train.inspect_interval) for the step being taken."""

    def finish(self, trainer: Any) -> None:
        """Flush and close."""

    def on_train_start(self, trainer: Any) -> None:
        self._guard(self.start, trainer)

    def on_batch_end(self, trainer: Any, metrics: dict) -> None:
        self._guard(self.log_step, trainer, metrics)

    def on_eval_end(self, trainer: Any, metrics: dict) -> None:
        self._guard(self.log_eval, trainer, metrics)

    def on_before_optimizer_step(self, trainer: Any) -> None:
        self._guard(self.log_grads, trainer)
        stats = getattr(trainer, "layer_stats", None)
        if stats:
            self._guard(self.log_layers, trainer, stats)

    def on_train_end(self, trainer: Any) -> None:
        self._guard(self.finish, trainer)


def scalars(metrics: dict) -> dict[str, float]:
    """The numeric entries of a metrics dict."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
