"""Compare runs: a summary table, a ranking, curves aligned on step, tokens, FLOPs and wall-clock, and diffs."""

from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import CheckpointError
from lmlab.runs.run_dir import RUN_RE, RunDir
from lmlab.track.jsonl import read_metrics

AXES = ("step", "tokens", "flops", "wall")


@dataclass
class RunSummary:
    """What `lmlab compare` shows of one run."""

    path: Path
    name: str
    arch: str
    params: int | None
    flops_per_token: int | None
    best_val: float | None
    final_val: float | None
    tokens_per_s: float | None
    mfu: float | None
    peak_mem: float | None
    wall: float | None
    val: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def curve(self, axis: str) -> tuple[list[float], list[float]]:
        """Validation loss against `axis` (step, tokens, flops or wall)."""
        points = [(r[axis], r["val_loss"]) for r in self.val if r.get(axis) is not None]
        return [p[0] for p in points], [p[1] for p in points]


def _median(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def load_summary(path: str | Path) -> RunSummary:
    """Summarise a run directory from its config and metrics.jsonl."""
    run = RunDir.open(path)
    run.require("logs/metrics.jsonl")
    cfg = run.config()
    records = read_metrics(run.logs / "metrics.jsonl")
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    # A val record lacks wall-clock; take it from the train record of the same step.
    wall_at = {r["step"]: r.get("wall") for r in train}
    for r in val:
        r.setdefault("wall", wall_at.get(r["step"]))
    from lmlab.model.flops import flops_per_token

    params = None
    params_file = run.meta / "params.json"
    if params_file.is_file():
        params = json.loads(params_file.read_text()).get("total")
    return RunSummary(
        path=run.path,
        name=run.path.name,
        arch=cfg.model.arch_name(),
        params=params,
        flops_per_token=flops_per_token(cfg.model, cfg.seq_len),
        best_val=min((r["val_loss"] for r in val), default=None),
        final_val=val[-1]["val_loss"] if val else None,
        tokens_per_s=_median([r.get("tokens_per_s") for r in train]),
        mfu=_median([r.get("mfu") for r in train]),
        peak_mem=max((r["peak_mem"] for r in train if r.get("peak_mem")), default=None),
        wall=train[-1].get("wall") if train else None,
        val=val,
        config=cfg.model_dump(mode="json"),
    )


def find_runs(root: str | Path, latest: int) -> list[Path]:
    """The `latest` most recent run directories under `root`."""
    root = Path(root)
    runs = (
        sorted((m.group(1), int(m.group(2)), p) for p in root.iterdir() if p.is_dir() and (m := RUN_RE.match(p.name)))
        if root.is_dir()
        else []
    )
    return [p for *_, p in runs[-latest:]]


def compare(paths: list[str | Path]) -> list[RunSummary]:
    """Summaries ranked by best validation loss (runs without one last)."""
    if not paths:
        raise CheckpointError("compare: no runs given; pass run directories or --latest N")
    summaries = [load_summary(p) for p in paths]
    return sorted(summaries, key=lambda s: (s.best_val is None, s.best_val or 0.0))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table_rows(summaries: list[RunSummary]) -> list[list[str]]:
    """Header plus one row per run, in rank order."""
    rows = [
        [
            "rank",
            "run",
            "arch",
            "params",
            "FLOPs/token",
            "best val",
            "final val",
            "tok/s",
            "MFU",
            "peak mem MiB",
            "wall s",
        ]
    ]
    for i, s in enumerate(summaries, 1):
        rows.append(
            [
                str(i),
                s.name,
                s.arch,
                _fmt(s.params, ","),
                _fmt(s.flops_per_token, ","),
                _fmt(s.best_val, ".4f"),
                _fmt(s.final_val, ".4f"),
                _fmt(s.tokens_per_s, ",.0f"),
                _fmt(s.mfu and 100 * s.mfu, ".1f"),
                _fmt(s.peak_mem and s.peak_mem / 2**20, ",.0f"),
                _fmt(s.wall, ".0f"),
            ]
        )
    return rows


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of the curve (xs, ys) at x; None outside its range."""
    for (x0, y0), (x1, y1) in itertools.pairwise(zip(xs, ys, strict=True)):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[0] if xs and x == xs[0] else None


def diff(a: RunSummary, b: RunSummary, axis: str = "tokens") -> dict:
    """Config fields that differ, and val loss of both runs aligned on `axis` at the points of run a."""
    fa, fb = _flatten(a.config), _flatten(b.config)
    config = {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
    xa, ya = a.curve(axis)
    xb, yb = b.curve(axis)
    aligned = []
    for x, y in zip(xa, ya, strict=True):
        other = interpolate(xb, yb, x)
        aligned.append({axis: x, "a": y, "b": other, "b_minus_a": None if other is None else other - y})
    return {"config": config, "aligned": aligned, "axis": axis}
