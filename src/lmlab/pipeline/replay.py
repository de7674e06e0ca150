"""Replay: re-run a run from its recorded config and data fingerprint and check its first losses match.

A resumed run is replayed segment by segment: each resume in `meta/resumes.jsonl` ends a segment
at the step it resumed from, and the next segment resumes the replay there with the config that
resume changed to, so the replay follows the same schedule, data order and settings as the run.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from lmlab.config import set_path
from lmlab.data.sources import load_corpus
from lmlab.errors import CheckpointError, DataError
from lmlab.runs.run_dir import RunDir
from lmlab.track.jsonl import read_metrics
from lmlab.trainer.callbacks import Callback

# How and where the shards were built, not what they hold: a replay that reuses them differs only here.
BUILD_FIELDS = {"cache", "reused", "build_seconds", "mb_per_s", "workers", "processes"}


class _StopAt(Callback):
    """Records each step's loss and stops the trainer after `last`."""

    def __init__(self, last: int) -> None:
        self.last, self.losses = last, {}

    def on_batch_end(self, trainer: Any, metrics: dict) -> None:
        self.losses[trainer.step] = float(metrics["loss"])
        if trainer.step >= self.last:
            trainer.should_stop = f"replay reached step {self.last}"


def replay(
    run: str | Path, *, steps: int = 20, rtol: float = 1e-5, save_dir: str | Path | None = None, train_fn=None
) -> dict:
    """Retrain `run` up to `steps` and compare the losses it logged there; `ok` says whether all match."""
    from lmlab.pipeline.train import train_from_config

    train_fn = train_fn or train_from_config
    src = RunDir.open(run)
    cfg = src.config()
    src.require("meta/data.json", "logs/metrics.jsonl")
    recorded_data = json.loads((src.meta / "data.json").read_text())
    if cfg.model.arch == "seq2seq":
        from lmlab.data.pairs import pairs_sha256, read_source

        sha = pairs_sha256(read_source(cfg.data.name))
    else:
        sha = load_corpus(cfg.data.name, max_chars=cfg.data.max_chars, cache=cfg.data.cache_dir).sha256
    if sha != recorded_data.get("corpus_sha256"):
        raise DataError(
            f"replay: corpus '{cfg.data.name}' is not the one {src.path} trained on "
            f"(sha256 {recorded_data.get('corpus_sha256', '?')[:12]}... recorded, {sha[:12]}... now)"
        )
    recorded = {
        r["step"]: float(r["loss"])
        for r in read_metrics(src.logs / "metrics.jsonl")
        if r.get("split") == "train" and r.get("step", math.inf) <= steps
    }
    if not recorded:
        raise CheckpointError(f"replay: {src.path / 'logs/metrics.jsonl'} has no training loss up to step {steps}")
    losses: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="lmlab-replay-") as tmp:
        result = None
        for seg_cfg, end in _segments(cfg, src.resumes(), max(recorded)):
            train = {"save_dir": str(save_dir or tmp), "run_tag": "replay", "sample_tokens": 0, "progress": False}
            train["resume"] = str(result.run.path) if result else None
            again = cfg.model_validate(seg_cfg.model_dump() | {"train": seg_cfg.train.model_dump() | train})
            stopper = _StopAt(end)
            result = train_fn(again, callbacks=[stopper], quiet=True)
            losses |= stopper.losses
        replay_data = json.loads((result.run.meta / "data.json").read_text())
        replay_path = str(result.run.path) if save_dir else None
    changed = sorted(k for k in recorded_data.keys() - BUILD_FIELDS if replay_data.get(k) != recorded_data[k])
    rows = []
    for step, loss in sorted(recorded.items()):
        again_loss = losses.get(step, math.nan)
        rows.append({"step": step, "recorded": loss, "replayed": again_loss, "diff": again_loss - loss})
    bad = [r for r in rows if not math.isclose(r["replayed"], r["recorded"], rel_tol=rtol, abs_tol=0.0)]
    worst = max(abs(r["diff"]) for r in rows)
    if changed:
        message = f"data fingerprint differs from {src.path} in: {', '.join(changed)}"
    elif bad:
        message = f"losses differ from step {bad[0]['step']} on ({len(bad)} of {len(rows)} beyond rtol {rtol:g})"
    else:
        message = f"replay OK: {len(rows)} losses up to step {rows[-1]['step']} match (max |diff| {worst:.2e})"
    return {"ok": not changed and not bad, "message": message, "rows": rows, "run": replay_path}


def _segments(final, resumes: list[dict], last: int) -> list[tuple[Any, int]]:
    """(config, last step) of each stretch of training up to `last`: the config before each resume is
    the one after it with the fields that resume changed set back."""
    configs = [final]
    for record in reversed(resumes):
        data = configs[0].model_dump(mode="json")
        for dotted, (before, _after) in record["changed"].items():
            set_path(data, dotted.split("."), before)
        configs.insert(0, final.model_validate(data))
    ends = [r["step"] for r in resumes] + [last]
    out = []
    for cfg, end in zip(configs, ends, strict=True):
        end = min(end, last)
        if end > (out[-1][1] if out else 0):
            out.append((cfg, end))
        if end >= last:
            break
    return out
