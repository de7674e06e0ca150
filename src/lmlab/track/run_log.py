"""logs/run_log.json: the whole run as one JSON document, in the shape nanoGPT's enhanced logging writes.

    {"config": {...}, "training_iterations": [{"iter", "loss", "lr", "time_ms",
      "mfu": {"value", "architecture", "flops_per_token", "breakdown": {attention, ffn, norm, position,
      lm_head}}}], "evaluations": [{"iter", "val_loss", "train_loss", ...}]}

`mfu.value` is a fraction of the peak (as in metrics.jsonl); `flops_per_token` and the breakdown are
training FLOPs (3x the forward) per token, so the breakdown sums to `flops_per_token`. The file is
rewritten atomically at every evaluation and at the end; a resumed run keeps the iterations up to the
step it resumed from and continues the lists. metrics.jsonl stays the line-by-line live record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmlab.model.flops import grouped_breakdown
from lmlab.trainer.callbacks import Callback

TRAINING = 3  # forward + backward = 3x the forward


class RunLog(Callback):
    """Collects iterations every `log_interval` steps and every evaluation; writes logs/run_log.json."""

    def __init__(self, path: str | Path, config: dict, model_cfg: Any, seq_len: int, log_interval: int) -> None:
        self.path, self.log_interval = Path(path), log_interval
        parts = {k: TRAINING * v for k, v in grouped_breakdown(model_cfg, seq_len).items()}
        self.mfu_card = {
            "architecture": model_cfg.arch_name(),
            "flops_per_token": sum(parts.values()),
            "breakdown": parts,
        }
        self.doc: dict[str, Any] = {"config": config, "training_iterations": [], "evaluations": []}

    @classmethod
    def for_run(cls, run: Any, cfg: Any) -> RunLog:
        """The run log of a decoder run directory (seq2seq runs have no per-token FLOPs card)."""
        return cls(
            run.logs / "run_log.json", cfg.model_dump(mode="json"), cfg.model, cfg.seq_len, cfg.train.log_interval
        )

    def on_train_start(self, trainer: Any) -> None:
        """On a resume, keep what was logged up to the checkpoint's step."""
        if trainer.step and self.path.is_file():
            old = json.loads(self.path.read_text())
            for key in ("training_iterations", "evaluations"):
                self.doc[key] = [r for r in old.get(key, []) if r["iter"] <= trainer.step]

    def on_batch_end(self, trainer: Any, metrics: dict) -> None:
        """One iteration record every `log_interval` steps and at the last step."""
        if trainer.step % self.log_interval and trainer.step != trainer.total_steps:
            return
        self.doc["training_iterations"].append(
            {
                "iter": metrics["step"],
                "loss": metrics["loss"],
                "lr": metrics["lr"],
                "time_ms": 1000 * metrics["step_time"],
                "tokens_per_s": metrics["tokens_per_s"],
                "mfu": {"value": metrics["mfu"], **self.mfu_card},
            }
        )

    def on_eval_end(self, trainer: Any, metrics: dict) -> None:
        """One evaluation record (val loss, and train-split loss where measured); the file is rewritten."""
        record = {"iter": metrics["step"], "val_loss": metrics["val_loss"]}
        if "train_eval_loss" in metrics:
            record["train_loss"] = metrics["train_eval_loss"]
        record |= {k: v for k, v in metrics.items() if k not in ("step", "val_loss", "train_eval_loss")}
        self.doc["evaluations"].append(record)
        self.write()

    def on_train_end(self, trainer: Any) -> None:
        """The final document."""
        self.write()

    def write(self) -> None:
        """Replace the file atomically: a reader never sees half a document."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1))
        os.replace(tmp, self.path)
