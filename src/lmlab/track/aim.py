"""Aim tracker: metrics with train/val context, hyperparameters, weight/gradient distributions, git/env."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmlab.errors import require
from lmlab.registry import TRACKER
from lmlab.track.base import SafeTracker, scalars
from lmlab.track.layout import aim_repo
from lmlab.track.tensorboard import TRAIN_SCALARS

# Logged as metrics of their own so Aim's "align by metric" puts runs with other batch sizes
# or architectures on a common tokens / FLOPs / wall-clock x axis.
AXES = ("tokens", "flops", "wall")


@TRACKER.register("aim")
class AimTracker(SafeTracker):
    """Tracks into the Aim repo that every run under the save_dir shares (`aim up --repo SAVE_DIR`, or
    `lmlab board --aim`); a resumed run continues its own Aim run, whose hash is kept in meta/aim_run.json."""

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
        """The tracker for a run directory: the shared Aim repo (see `lmlab.track.layout`), the run's config
        as hyperparameters."""
        return cls(
            aim_repo(run.path, cfg.track.shared),
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
        kept = Path(self.meta_dir) / "aim_run.json" if self.meta_dir is not None else None
        options = {"repo": str(self.repo), "log_system_params": False, "capture_terminal_logs": False}
        options["system_tracking_interval"] = None
        previous = json.loads(kept.read_text()).get("hash") if kept is not None and kept.is_file() else None
        if previous is not None and trainer.step:  # a resume: the same Aim run continues
            try:
                self.run = aim.Run(run_hash=previous, **options)
            except Exception as exc:  # a killed run leaves its lock; the process that held it is gone
                if "lock" not in type(exc).__name__.lower():
                    raise
                self.run = aim.Run(run_hash=previous, force_resume=True, **options)
        else:
            self.run = aim.Run(experiment=self.experiment, **options)
        if kept is not None:
            kept.write_text(json.dumps({"hash": self.run.hash, "repo": str(self.repo)}))
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

    def log_layers(self, trainer: Any, stats: dict[str, float]) -> None:
        """One metric per statistic (`act_rms`, `attn_entropy`, `grad_norm`) with the layer in its context."""
        for key, value in stats.items():
            layer, stat = key.split("/", 1)
            self.run.track(value, name=stat, step=trainer.step + 1, context={"layer": int(layer[5:])})

    def finish(self, trainer: Any) -> None:
        """Close the run so its data is flushed for indexing."""
        self.run.close()
