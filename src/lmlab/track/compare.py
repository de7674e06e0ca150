"""Compare runs: a summary table, a ranking, curves aligned on step, tokens, FLOPs and wall-clock, and diffs.

Losses per token mean different things under different tokenizers, so runs whose tokenizers
differ are compared on bits per byte of validation text (bits per character for runs recorded
before byte counts were kept). Runs validated on different corpora are marked, and diffing two
of them needs `force`.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.config import changed_fields
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
    data: dict = field(default_factory=dict)  # meta/data.json: tokenizer and validation-data fingerprint
    unit: str = "token"  # what the losses above are per: token (nats), or byte / char (bits)
    comparable: bool = True  # False: other runs it is compared with use other tokenizers and no unit joins them

    @property
    def val_data(self) -> str:
        """A short fingerprint of the corpus the run was validated on."""
        return str(self.data.get("corpus_sha256", "?"))[:8]

    def bits_factor(self, unit: str) -> float | None:
        """What turns nats per token into bits per `unit` (byte or char) of validation text; None if unknown."""
        count = self.data.get({"byte": "val_bytes", "char": "val_chars"}[unit])
        return self.data["n_val"] / count / math.log(2) if count and self.data.get("n_val") else None

    def rescale(self, unit: str) -> None:
        """Express every loss per `unit` (bits) instead of per token (nats)."""
        f = self.bits_factor(unit)
        self.best_val, self.final_val = (v if v is None else v * f for v in (self.best_val, self.final_val))
        self.val = [r | {"val_loss": r["val_loss"] * f} for r in self.val]
        self.unit = unit

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
    params_file, data_file = run.meta / "params.json", run.meta / "data.json"
    if params_file.is_file():
        params = json.loads(params_file.read_text()).get("total")
    data = json.loads(data_file.read_text()) if data_file.is_file() else {}
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
        data=data,
    )


def find_runs(root: str | Path, latest: int) -> list[Path]:
    """The `latest` most recent run directories under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"compare: --root {root} does not exist (--latest looks for runs there)")
    runs = sorted(
        (m.group(1), int(m.group(2)), p) for p in root.iterdir() if p.is_dir() and (m := RUN_RE.match(p.name))
    )
    if not runs:
        raise CheckpointError(f"compare: --root {root} holds no run directories")
    return [p for *_, p in runs[-latest:]]


def common_unit(summaries: list[RunSummary]) -> str | None:
    """`token` when every run has the same tokenizer, else the finest text unit all of them can be measured
    in; None when some run recorded no text counts (an encoder-decoder), so no unit makes them comparable."""
    if len({s.data.get("tokenizer") for s in summaries}) <= 1:
        return "token"
    for unit in ("byte", "char"):
        if all(s.bits_factor(unit) for s in summaries):
            return unit
    return None


def compare(paths: list[str | Path]) -> list[RunSummary]:
    """Summaries in one comparable unit (see `common_unit`), ranked by best validation loss (runs without one last)."""
    if not paths:
        raise CheckpointError("compare: no runs given; pass run directories or --latest N")
    summaries = [load_summary(p) for p in paths]
    unit = common_unit(summaries)
    if unit is None:
        for s in summaries:
            s.comparable = False
    elif unit != "token":
        for s in summaries:
            s.rescale(unit)
    return sorted(summaries, key=lambda s: (s.best_val is None, s.best_val or 0.0))


def loss_label(unit: str) -> str:
    """How a loss in `unit` is named in tables and plots."""
    return "validation loss (nats/token)" if unit == "token" else f"validation bits per {unit}"


def notes(summaries: list[RunSummary]) -> list[str]:
    """What a reader must know before comparing these numbers."""
    out = []
    if summaries and not summaries[0].comparable:
        missing = ", ".join(s.name for s in summaries if not s.bits_factor("char"))
        out.append(
            f"the runs use different tokenizers and {missing} recorded no validation text counts, so these "
            "losses per token cannot be put on one scale: do not rank them against each other"
        )
    elif summaries and summaries[0].unit != "token":
        out.append(
            f"the runs use different tokenizers, so losses are bits per {summaries[0].unit} of validation text "
            "(a loss per token is not comparable across tokenizers)"
        )
    if len({s.val_data for s in summaries}) > 1:
        out.append("the runs were validated on different data (column 'val data'): their losses are not comparable")
    return out


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
    mixed_data = len({s.val_data for s in summaries}) > 1
    if mixed_data:
        rows[0].append("val data")
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
            + ([s.val_data] if mixed_data else [])
        )
    return rows


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of the curve (xs, ys) at x; None outside its range."""
    for (x0, y0), (x1, y1) in itertools.pairwise(zip(xs, ys, strict=True)):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[0] if xs and x == xs[0] else None


def diff(a: RunSummary, b: RunSummary, axis: str = "tokens", *, force: bool = False) -> dict:
    """Config fields that differ, and val loss of both runs aligned on `axis` at the points of run a.

    Runs validated on different corpora are refused unless `force`.
    """
    if a.val_data != b.val_data and not force:
        raise CheckpointError(
            f"compare --diff: {a.name} and {b.name} were validated on different data (corpus {a.val_data} vs "
            f"{b.val_data}), so their losses are not comparable; pass --force to diff them anyway"
        )
    config = changed_fields(a.config, b.config)
    xa, ya = a.curve(axis)
    xb, yb = b.curve(axis)
    aligned = []
    for x, y in zip(xa, ya, strict=True):
        other = interpolate(xb, yb, x)
        aligned.append({axis: x, "a": y, "b": other, "b_minus_a": None if other is None else other - y})
    return {"config": config, "aligned": aligned, "axis": axis}
