"""Hyperparameter search with Optuna over any config field; every trial is an ordinary run directory.

A search dimension is `FIELD=SPEC`:
  `a,b,c`          a choice among values (the only kind a grid search takes)
  `float:LO:HI`    uniform real       `logfloat:LO:HI`  log-uniform real
  `int:LO:HI[:STEP]`  uniform integer (on LO + k*STEP)    `logint:LO:HI`  log-uniform integer
FIELD is `section.field` (`train.lr`, `model.rope.theta`) or a field name unique across sections (`lr`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.config import deep_merge, field_path, nested, resolve_config
from lmlab.errors import ConfigError, require
from lmlab.pipeline.study_progress import StudyProgress

SAMPLERS = ("grid", "random", "tpe")
KINDS = ("float", "logfloat", "int", "logint")


@dataclass
class Dim:
    """One searched field."""

    name: str
    path: tuple[str, ...]
    kind: str  # "choice" or one of KINDS
    choices: list[Any] | None = None
    low: float = 0.0
    high: float = 0.0
    step: int = 1

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this field's value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind.endswith("int"):
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=self.step, log=self.kind == "logint"
            )
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "logfloat")

    def corners(self) -> list[Any]:
        """Values that bound the dimension: every choice, or both ends of a range."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind.endswith("int") else float
        return [cast(self.low), cast(self.high)]


def _scalar(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_dim(spec: str) -> Dim:
    """`train.lr=logfloat:1e-4:1e-2` -> Dim (field checked against the schema)."""
    if "=" not in spec:
        raise ConfigError(f"sweep --param: '{spec}' is not FIELD=SPEC (e.g. lr=logfloat:1e-4:1e-2 or ffn=mlp,swiglu)")
    name, body = (x.strip() for x in spec.split("=", 1))
    path = field_path(name)
    head, _, rest = body.partition(":")
    if head in KINDS:
        bounds = rest.split(":")
        step = bounds.pop() if head == "int" and len(bounds) == 3 else "1"
        try:
            low, high = (float(b) for b in bounds) if len(bounds) == 2 else (None, None)
            step = int(step)
        except ValueError:
            low = high = None
        if low is None or not low < high or (head.startswith("log") and low <= 0):
            raise ConfigError(
                f"sweep --param {name}: '{body}' needs {head}:LO:HI with LO < HI"
                + (" and LO > 0" if "log" in head else "")
            )
        if step < 1 or (head == "int" and (high - low) % step):
            raise ConfigError(f"sweep --param {name}: STEP must be >= 1 and divide HI - LO (got {body})")
        return Dim(".".join(path), path, head, low=low, high=high, step=step)
    choices = [_scalar(x.strip()) for x in body.split(",") if x.strip()]
    if not choices:
        raise ConfigError(
            f"sweep --param {name}: no values; give a,b,c or one of {', '.join(k + ':LO:HI' for k in KINDS)}"
        )
    return Dim(".".join(path), path, "choice", choices=choices)


def _overrides(dims: list[Dim], values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dims:
        out = deep_merge(out, nested(d.path, values[d.name]))
    return out


def run_sweep(
    preset: str | None,
    params: list[str],
    *,
    sampler: str = "tpe",
    trials: int | None = None,
    metric: str = "val_loss",
    overrides: dict[str, Any] | None = None,
    save_dir: str | Path = "runs/sweep",
    train_fn=None,
) -> dict:
    """Run the search and return (and write to save_dir/sweep.json and .md) every trial, best first."""
    from lmlab.pipeline.train import train_from_config

    optuna = require("optuna", "sweep")
    train_fn = train_fn or train_from_config
    if sampler not in SAMPLERS:
        raise ConfigError(f"sweep --sampler: '{sampler}'; allowed: {', '.join(SAMPLERS)}")
    overrides = overrides or {}
    dims = _dims(params, preset, overrides)
    base = resolve_config(preset=preset, cli=overrides)
    chosen, trials = _sampler(optuna, sampler, dims, trials, base.train.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=chosen)
    rows: list[dict] = []
    invalid: list[dict] = []
    progress = StudyProgress("sweep", trials)

    def objective(trial: Any) -> float:
        values = {d.name: d.suggest(trial) for d in dims}
        train = {"save_dir": str(save_dir), "run_tag": f"trial{trial.number:03d}"}
        try:
            cfg = resolve_config(
                preset=preset, cli=deep_merge(deep_merge(overrides, _overrides(dims, values)), {"train": train})
            )
        except ConfigError as exc:  # an interior point the edges did not rule out (d_model 47 with 4 heads)
            invalid.append({"trial": trial.number, "params": values, "error": str(exc)})
            progress.skip(f"trial {trial.number}", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        label = f"trial {trial.number} " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        progress.start(label)
        result = train_fn(cfg, quiet=True)
        progress.end(label, result.metrics.get("val_loss"))
        if metric not in result.metrics:
            raise ConfigError(
                f"sweep --metric: '{metric}' not in the run's metrics; allowed: {', '.join(result.metrics)}"
            )
        value = float(result.metrics[metric])
        rows.append({"trial": trial.number, "params": values, metric: value, "run": str(result.run.path)})
        return value if math.isfinite(value) else float("inf")

    study.optimize(objective, n_trials=trials)
    rows.sort(key=lambda r: r[metric])
    if not rows:
        raise ConfigError(f"sweep: every trial's config was invalid, e.g. {invalid[0]['error']}")
    report = {"preset": preset, "sampler": sampler, "metric": metric, "space": params, "trials": rows}
    report["invalid"] = invalid
    _write_report(Path(save_dir), report)
    return report


def _write_report(out: Path, report: dict) -> None:
    """sweep.json (every trial) and sweep.md (the table) into the study folder."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(report, indent=2))
    (out / "sweep.md").write_text(markdown_table(report))


def _dims(params: list[str], preset: str | None, overrides: dict) -> list:
    """The searched fields, after checking that every value at the edge of the space makes a valid config."""
    if not params:
        raise ConfigError("sweep: give at least one --param FIELD=SPEC")
    dims = [parse_dim(p) for p in params]
    if len({d.name for d in dims}) != len(dims):
        raise ConfigError("sweep --param: a field is searched twice")
    for d in dims:
        for value in d.corners():
            resolve_config(preset=preset, cli=deep_merge(overrides, nested(d.path, value)))
    return dims


def _sampler(optuna: Any, sampler: str, dims: list, trials: int | None, seed: int) -> tuple[Any, int]:
    """The Optuna sampler and the number of trials (a grid defaults to its size and never exceeds it)."""
    if sampler == "grid":
        ranged = [d.name for d in dims if d.kind != "choice"]
        if ranged:
            raise ConfigError(f"sweep --sampler grid: {', '.join(ranged)} is a range; grid takes a,b,c choices")
        grid = {d.name: d.choices for d in dims}
        size = math.prod(len(c) for c in grid.values())
        trials = min(trials or size, size)
        chosen = optuna.samplers.GridSampler(grid, seed=seed)
    else:
        if trials is None:
            raise ConfigError(f"sweep --trials: required with --sampler {sampler}; allowed: >= 1")
        cls = optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler
        chosen = cls(seed=seed)
    if trials < 1:
        raise ConfigError(f"sweep --trials: {trials}; allowed: >= 1")
    return chosen, trials


def markdown_table(report: dict) -> str:
    """Trials as a Markdown table, best first."""
    metric = report["metric"]
    names = list(report["trials"][0]["params"]) if report["trials"] else []
    lines = [
        f"Sweep ({report['sampler']}) over {', '.join(f'`{s}`' for s in report['space'])}, minimising {metric}.",
        "",
        "| rank | trial | " + " | ".join(names) + f" | {metric} | run |",
        "| ---: | ---: | " + " | ".join("---" for _ in names) + " | ---: | --- |",
    ]
    for rank, r in enumerate(report["trials"], 1):
        vals = " | ".join(_fmt(r["params"][n]) for n in names)
        lines.append(f"| {rank} | {r['trial']} | {vals} | {r[metric]:.4f} | {Path(r['run']).name} |")
    if report.get("invalid"):
        lines += ["", f"{len(report['invalid'])} sampled configs were invalid and not trained (see sweep.json)."]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
