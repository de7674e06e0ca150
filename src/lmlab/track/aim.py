"""Aim tracker: metrics with train/val context, hyperparameters, weight/gradient distributions, git/env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.errors import require
from lmlab.registry import TRACKER
from lmlab.track.base import SafeTracker, scalars
from lmlab.track.tensorboard import TRAIN_SCALARS

# Logged as metrics of their own so Aim's "align by metric" puts runs with other batch sizes
# or architectures on a common tokens / FLOPs / wall-clock x axis.
AXES = ("tokens", "flops", "wall")


@TRACKER.register("aim")
class AimTracker(SafeTracker):
    """Writes an Aim repo under logs/aim (open it with `aim up --repo RUN/logs/aim`)."""

    name = "aim"

    def __init__(
        self,
        repo: str | Path,
        *,
        experiment: str = "lmlab",
        run_name: str | None = None,
        hparams: dict | None = None,
        meta_dir: str | Path | None = None,
        hist_interval: int = 100,
    ) -> None:
        super().__init__()
        self.repo, self.experiment, self.run_name = Path(repo), experiment, run_name
        self.hparams, self.meta_dir, self.hist_interval = hparams or {}, meta_dir, hist_interval
        self.run = None

    @classmethod
    def for_run(cls, run: Any, cfg: Any) -> AimTracker:
        """The tracker for a run directory: an Aim repo in `logs/aim`, the run's config as hyperparameters."""
        return cls(
            run.logs / "aim",
            experiment=cfg.track.project,
            run_name=run.path.name,
            hparams=cfg.model_dump(mode="json"),
            meta_dir=run.meta,
            hist_interval=cfg.track.hist_interval,
        )

    def start(self, trainer: Any) -> None:
        """Open the Aim run and record hyperparameters and provenance."""
        aim = require("aim", "track")
        self.repo.mkdir(parents=True, exist_ok=True)
        self.run = aim.Run(
            repo=str(self.repo),
            experiment=self.experiment,
            log_system_params=False,
            capture_terminal_logs=False,
            system_tracking_interval=None,
        )
        if self.run_name:
            self.run.name = self.run_name
        self.run["hparams"] = self.hparams
        if self.meta_dir is not None:
            meta = Path(self.meta_dir)
            for key, fname in (("git", "git.txt"), ("env", "env.txt")):
                if (meta / fname).is_file():
                    self.run[key] = (meta / fname).read_text()

    def _track(self, values: dict[str, float], names: tuple[str, ...], step: int, subset: str) -> None:
        ctx = {"subset": subset}
        for key in (*names, *AXES):
            if key in values:
                self.run.track(values[key], name=key, step=step, context=ctx)

    def log_step(self, trainer: Any, metrics: dict) -> None:
        """Training scalars with context subset=train."""
        self._track(scalars(metrics), TRAIN_SCALARS, trainer.step, "train")

    def log_eval(self, trainer: Any, metrics: dict) -> None:
        """Validation loss with context subset=val."""
        values = scalars(metrics)
        values["loss"] = values.pop("val_loss")
        self._track(values, ("loss",), trainer.step, "val")
        if "train_eval_loss" in values:
            self._track({"eval_loss": values["train_eval_loss"]}, ("eval_loss",), trainer.step, "train")

    def log_grads(self, trainer: Any) -> None:
        """Distributions of every parameter and its gradient, every `hist_interval` steps."""
        from aim import Distribution

        step = trainer.step + 1
        if step % self.hist_interval:
            return
        for name, p in trainer.raw_model.named_parameters():
            self.run.track(
                Distribution(p.detach().float().cpu().numpy()), name=name, step=step, context={"kind": "param"}
            )
            if p.grad is not None:
                grad = p.grad.detach().float().cpu().numpy()
                self.run.track(Distribution(grad), name=name, step=step, context={"kind": "grad"})

    def finish(self, trainer: Any) -> None:
        """Close the run so its data is flushed for indexing."""
        self.run.close()
