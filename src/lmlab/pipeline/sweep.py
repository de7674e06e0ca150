"""Hyperparameter search with Optuna over any config field; every trial is an ordinary run directory.

A search dimension is `FIELD=SPEC`:
  `a,b,c`          a choice among values (the only kind a grid search takes)
  `float:LO:HI`    uniform real       `logfloat:LO:HI`  log-uniform real
  `int:LO:HI[:STEP]`  uniform integer (on LO + k*STEP)    `logint:LO:HI`  log-uniform integer
FIELD is `section.field` (`train.lr`, `model.rope.theta`) or a field name unique across sections (`lr`).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.config import deep_merge, field_path, nested, resolve_config
from lmlab.errors import ConfigError, require
from lmlab.pipeline.study import Placement, PlannedRun, Study, add_callback
from lmlab.pipeline.study_progress import StudyProgress

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "hyperband")
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
    placement: Placement | None = None,
    storage: str | None = None,
    study_name: str = "sweep",
    pruner: str | None = None,
) -> dict:
    """Run the search and return (and write to save_dir/sweep.json and .md) every trial, best first.

    Trials live in an Optuna storage (`storage`: `journal:PATH` or an RDB URL; default a journal in
    save_dir), so the same call again continues the search, and other processes on the same storage and
    `study_name` share it: a grid is covered once between them, TPE sees every finished trial.
    """
    optuna = require("optuna", "sweep")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sweep --sampler: '{sampler}'; allowed: {', '.join(SAMPLERS)}")
    if pruner is not None and pruner not in PRUNERS:
        raise ConfigError(f"sweep --pruner: '{pruner}'; allowed: {', '.join(PRUNERS)}")
    overrides = overrides or {}
    dims = _dims(params, preset, overrides)
    base = resolve_config(preset=preset, cli=overrides)
    shared = storage is not None
    chosen, trials = _sampler(optuna, sampler, dims, trials, base.train.seed + (os.getpid() if shared else 0))
    out = Path(save_dir)
    spec = {"preset": preset, "space": params, "sampler": sampler, "trials": trials, "metric": metric}
    Study(out, "sweep", {**spec, "overrides": overrides, "pruner": pruner}).record_plan([])
    url = storage or f"journal:{out.resolve() / 'optuna.journal'}"
    search = Search(optuna, url, study_name, chosen, pruner, dims, spec, base.train.max_steps)
    progress = StudyProgress("sweep", trials, out=out)
    try:
        Study(out, "sweep", {}).run(
            search.trials(preset, overrides, trials, progress, out),
            placement,
            train_fn=train_fn,
            progress=progress,
            on_done=functools.partial(search.finished, metric),
        )
    finally:
        progress.close()
    report = search.report(spec)
    if not report["trials"]:
        raise ConfigError(f"sweep: every trial's config was invalid, e.g. {report['invalid'][0]['error']}")
    _write_report(out, report)
    return report


class Search:
    """One Optuna study in a storage that several processes may share, and the trials this process runs."""

    def __init__(self, optuna, url, name, sampler, pruner, dims, spec, max_steps) -> None:
        self.optuna, self.url, self.name, self.dims = optuna, url, name, dims
        self.storage = open_storage(optuna, url)
        self.pruner = make_pruner(optuna, pruner, max_steps)
        self.pruner_name = pruner
        self.study = self._open(sampler, spec)
        self.keys: dict[str, int] = {}  # run key -> trial id

    def _open(self, sampler, spec):
        optuna, grid = self.optuna, spec["sampler"] == "grid"
        kwargs = dict(study_name=self.name, storage=self.storage, sampler=sampler, pruner=self.pruner)
        try:
            study = optuna.create_study(direction="minimize", **kwargs)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(**kwargs)
            _wait_for(lambda: "space" in study.user_attrs, f"sweep: study '{self.name}' in {self.url} to be set up")
            if study.user_attrs["space"] != spec:
                raise ConfigError(
                    f"sweep --study-name {self.name}: {self.url} holds a different search "
                    f"({study.user_attrs['space']}); use another --study-name"
                ) from None
            self._requeue_stale(study)
            return study
        if grid:  # every point queued once, by the process that created the study; all of them claim from it
            for point in itertools.product(*(d.choices for d in self.dims)):
                study.enqueue_trial(dict(zip((d.name for d in self.dims), point, strict=True)))
        study.set_user_attr("space", spec)
        return study

    def _requeue_stale(self, study) -> None:
        """Trials left running by a dead process of this machine (a killed sweep) are queued again, under the
        same run key, so their runs continue from their last checkpoint."""
        state = self.optuna.trial.TrialState
        for t in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            host, _, pid = str(t.user_attrs.get("owner", "")).rpartition(":")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                self.storage.set_trial_state_values(self._id(t.number), state.FAIL)
                study.enqueue_trial(t.params, user_attrs={"run_key": t.user_attrs.get("run_key", _key(t.number))})

    def _id(self, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(self.name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def _claim(self, limit: int) -> tuple[Any, int] | None:
        """The next trial for this process and its id: a queued one claimed atomically (the storage lets one
        process win each), else a new one from the sampler, while the study has fewer than `limit`."""
        state = self.optuna.trial.TrialState
        counted = (state.COMPLETE, state.PRUNED, state.RUNNING)
        if len(self.study.get_trials(deepcopy=False, states=counted)) >= limit:
            return None
        for t in self.study.get_trials(deepcopy=False, states=(state.WAITING,)):
            trial_id = self._id(t.number)
            if self.storage.set_trial_state_values(trial_id, state.RUNNING):
                return self.optuna.trial.Trial(self.study, trial_id), trial_id
        if self.study.user_attrs["space"]["sampler"] == "grid":
            return None
        trial = self.study.ask()
        return trial, self._id(trial.number)

    def trials(self, preset, overrides, limit: int, progress, out: Path) -> Iterator[PlannedRun]:
        """Claimed trials as planned runs, drawn one at a time; an invalid point is recorded and skipped."""
        while (claimed := self._claim(limit)) is not None:
            trial, trial_id = claimed
            self.storage.set_trial_user_attr(trial_id, "owner", f"{socket.gethostname()}:{os.getpid()}")
            values = {d.name: d.suggest(trial) for d in self.dims}
            key = trial.user_attrs.get("run_key", _key(trial.number))
            self.storage.set_trial_user_attr(trial_id, "run_key", key)
            try:
                cfg = resolve_config(preset=preset, cli=deep_merge(overrides, _overrides(self.dims, values)))
            except ConfigError as exc:  # an interior point the edges did not rule out (d_model 47 with 4 heads)
                self.storage.set_trial_user_attr(trial_id, "invalid", str(exc))
                self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
                progress.skip(f"trial {trial.number}", str(exc))
                continue
            self.keys[key] = trial_id
            if self.pruner_name is not None:  # the run reports its evaluations to the trial, wherever it trains
                spec = {"storage": self.url, "study": self.name, "trial_id": trial_id, "pruner": self.pruner_name}
                add_callback(out, key, "lmlab.pipeline.sweep:PruneCallback", spec)
            label = f"trial {trial.number} " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            yield PlannedRun(key, label, cfg.model_dump(mode="json"))

    def finished(self, metric: str, run: PlannedRun, record: dict | None) -> None:
        """Tell the study how a trial's run ended: its metric, pruned, or failed."""
        state = self.optuna.trial.TrialState
        trial_id = self.keys[run.key]
        number = self.storage.get_trial(trial_id).number
        if record is None:
            self.study.tell(number, state=state.FAIL)
            return
        metrics = record["metrics"]
        if metric not in metrics:
            raise ConfigError(f"sweep --metric: '{metric}' not in the run's metrics; allowed: {', '.join(metrics)}")
        value = float(metrics[metric])
        self.storage.set_trial_user_attr(trial_id, "run", record["run"])
        self.storage.set_trial_user_attr(trial_id, "value", value)
        if "pruned" in str(metrics.get("stopped", "")):
            self.study.tell(number, state=state.PRUNED)
        else:
            self.study.tell(number, value if math.isfinite(value) else float("inf"))

    def report(self, spec: dict) -> dict:
        """Every finished trial of the study (whichever process ran it), best first; invalid and pruned ones."""
        state = self.optuna.trial.TrialState
        done = self.study.get_trials(deepcopy=False, states=(state.COMPLETE,))
        metric = spec["metric"]
        rows = [
            {
                "trial": t.number,
                "params": dict(t.params),
                metric: t.user_attrs.get("value", t.value),
                "run": t.user_attrs.get("run", ""),
            }
            for t in done
        ]
        rows.sort(key=lambda r: (r[metric], r["trial"]))
        pruned = self.study.get_trials(deepcopy=False, states=(state.PRUNED,))
        invalid = [
            {"trial": t.number, "params": dict(t.params), "error": t.user_attrs["invalid"]}
            for t in pruned
            if "invalid" in t.user_attrs
        ]
        stopped = [t.number for t in pruned if "invalid" not in t.user_attrs]
        return {**spec, "trials": rows, "invalid": invalid, "pruned": stopped}


def open_storage(optuna, url: str):
    """`journal:PATH` (a file that processes on one machine or a shared file system append to) or an RDB URL."""
    if url.startswith("journal:"):
        path = url[len("journal:") :]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            from optuna.storages.journal import JournalFileBackend
        except ImportError:  # optuna < 4
            from optuna.storages import JournalFileStorage as JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise ConfigError(f"sweep --storage: '{url}'; allowed: journal:PATH or an RDB URL (sqlite:///sweep.db)")
    return optuna.storages.RDBStorage(url)


def make_pruner(optuna, name: str | None, max_steps: int | None):
    """Optuna's median or Hyperband pruner over the validation losses a run reports at each evaluation."""
    if name is None:
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_steps or "auto", reduction_factor=3)


class PruneCallback:
    """Reports each evaluation's validation loss to the trial and stops the run when the pruner says so."""

    def __init__(self, spec: dict) -> None:
        optuna = require("optuna", "sweep")
        storage = open_storage(optuna, spec["storage"])
        study = optuna.load_study(
            study_name=spec["study"], storage=storage, pruner=make_pruner(optuna, spec["pruner"], None)
        )
        self.trial, self.name = optuna.trial.Trial(study, spec["trial_id"]), spec["pruner"]

    def __call__(self, trainer: Any, event: Any) -> None:
        if event.name != "eval_end" or not math.isfinite(event.data["val_loss"]):
            return
        self.trial.report(event.data["val_loss"], trainer.step)
        if self.trial.should_prune():
            trainer.should_stop = f"pruned by the {self.name} pruner at step {trainer.step}"


def _key(number: int) -> str:
    return f"trial{number:03d}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for(ready, what: str, timeout: float = 120.0) -> None:
    """Poll until `ready()` (another process is setting the study up); an error naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ConfigError(f"{what}: still waiting after {timeout:.0f} s")
        time.sleep(0.1)


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
        size = math.prod(len(d.choices) for d in dims)
        trials = min(trials or size, size)
        chosen = optuna.samplers.RandomSampler(seed=seed)  # the grid's points are queued; nothing is sampled
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
