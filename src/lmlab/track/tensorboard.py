"""TensorBoard tracker: scalars against step, tokens, FLOPs and wall-clock; weight and gradient histograms."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmlab.errors import require
from lmlab.registry import TRACKER
from lmlab.track.base import SafeTracker, scalars
from lmlab.track.layout import tensorboard_dir

TRAIN_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time", "data_wait")


@TRACKER.register("tensorboard")
class TensorBoardTracker(SafeTracker):
    """Writes event files (`<save_dir>/tb/<run-id>/`, see `lmlab.track.layout`); histograms of parameters and gradients every `hist_interval` steps.

    Val loss is also written with the tokens seen and GFLOPs spent as the x value
    (`val/loss_by_tokens`, `val/loss_by_gflops`), so runs with different batch sizes or
    architectures line up in TensorBoard's own charts.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | Path, hist_interval: int = 100) -> None:
        super().__init__()
        self.log_dir, self.hist_interval = Path(log_dir), hist_interval
        self.writer = None

    @classmethod
    def for_run(cls, run: Any, cfg: Any) -> TensorBoardTracker:
        """The tracker for a run directory: `<save_dir>/tb/<run-id>/` (or the run's logs/tensorboard)."""
        return cls(tensorboard_dir(run.path, cfg.track.shared), cfg.track.hist_interval)

    def start(self, trainer: Any) -> None:
        """Open the event-file writer."""
        require("tensorboard", "track")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on a resume, TensorBoard hides what a killed run logged after its last checkpoint
        self.writer = SummaryWriter(str(self.log_dir), purge_step=trainer.step or None)
        self.t0 = time.time()

    def log_step(self, trainer: Any, metrics: dict) -> None:
        """Training scalars at this step."""
        values = scalars(metrics)
        for key in TRAIN_SCALARS:
            if key in values:
                self.writer.add_scalar(f"train/{key}", values[key], trainer.step, walltime=self.t0 + values["wall"])

    def log_eval(self, trainer: Any, metrics: dict) -> None:
        """Validation loss against step, tokens and GFLOPs."""
        loss = metrics["val_loss"]
        self.writer.add_scalar("val/loss", loss, trainer.step)
        self.writer.add_scalar("val/loss_by_tokens", loss, int(metrics["tokens"]))
        self.writer.add_scalar("val/loss_by_gflops", loss, int(metrics.get("flops", 0) / 1e9))
        if metrics.get("train_eval_loss") is not None:  # the training split, measured as validation is
            self.writer.add_scalar("train/eval_loss", metrics["train_eval_loss"], trainer.step)
        self.writer.flush()

    def log_grads(self, trainer: Any) -> None:
        """Histograms of every parameter and its gradient, every `hist_interval` steps."""
        step = trainer.step + 1  # the step being taken
        if step % self.hist_interval:
            return
        for name, p in trainer.raw_model.named_parameters():
            self.writer.add_histogram(f"params/{name}", p.detach().float().cpu(), step)
            if p.grad is not None:
                self.writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def log_layers(self, trainer: Any, stats: dict[str, float]) -> None:
        """`layers/<stat>/layer<i>`, so each statistic's layers share one chart section."""
        for key, value in stats.items():
            layer, stat = key.split("/", 1)
            self.writer.add_scalar(f"layers/{stat}/{layer}", value, trainer.step + 1)

    def finish(self, trainer: Any) -> None:
        """Close the event file."""
        self.writer.close()
