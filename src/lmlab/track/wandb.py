"""Weights & Biases tracker; `WANDB_MODE=offline` needs no account or network."""

from __future__ import annotations

from typing import Any

from lmlab.errors import require
from lmlab.registry import TRACKER
from lmlab.track.base import SafeTracker, scalars


@TRACKER.register("wandb")
class WandBLogger(SafeTracker):
    """Logs step metrics (train/...), evaluations (val/loss) and the run config to W&B."""

    name = "wandb"

    def __init__(self, project: str = "lmlab", config: dict | None = None, **init_kwargs: Any) -> None:
        super().__init__()
        self.project, self.config, self.init_kwargs = project, config or {}, init_kwargs
        self.run = None

    @classmethod
    def for_run(cls, run: Any, cfg: Any) -> WandBLogger:
        """The tracker for a run directory: a W&B run named after it, files under `logs/`."""
        return cls(cfg.track.project, cfg.model_dump(mode="json"), name=run.path.name, dir=str(run.logs))

    def start(self, trainer: Any) -> None:
        """Open the W&B run."""
        wandb = require("wandb", "track")
        self.run = wandb.init(project=self.project, config=self.config, **self.init_kwargs)

    def log_step(self, trainer: Any, metrics: dict) -> None:
        """Scalar metrics against the step (tokens, FLOPs and wall-clock are logged as metrics too)."""
        self.run.log({f"train/{k}": v for k, v in scalars(metrics).items()}, step=trainer.step)

    def log_eval(self, trainer: Any, metrics: dict) -> None:
        """The validation loss."""
        logged = {"val/loss": metrics["val_loss"], "val/tokens": metrics["tokens"]}
        if metrics.get("train_eval_loss") is not None:
            logged["train/eval_loss"] = metrics["train_eval_loss"]
        self.run.log(logged, step=trainer.step)

    def finish(self, trainer: Any) -> None:
        """Finish the run."""
        self.run.finish()
