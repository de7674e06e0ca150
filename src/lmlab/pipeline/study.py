"""The study runner that every study command shares (ablate, sweep, and any later one).

A study directory records its plan (every run's full config) in `study.json` before the first run
starts. Each run trains in its own run directory under the study folder; when it ends, its result is
written to `study/<key>.json`, and that file is what marks it complete. Running the same command again
with the same `--out` trains only the runs that are not complete: a run killed mid-way continues from
its last checkpoint, a finished one is never trained again, and a plan that differs is refused with
what differs.

Runs go one after another in this process (`jobs` 1), in `jobs` processes side by side, each bound to
a device (`devices`, or CPU threads per job), or as SLURM jobs through submitit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import ConfigError, LmlabError
from lmlab.runs.lock import RunLock, holder, stale_reason

PLAN = "study.json"
STATE = "study"  # results, launch configs and worker logs, one set per run
LAUNCHERS = ("local", "slurm", "submitit-local")


class StudyPending(LmlabError):
    """Some runs are not complete yet (submitted as jobs, or stopped): the same command again finishes them."""


@dataclass
class PlannedRun:
    """One run of a study: a key unique in the study (its run tag and file names), a label and its config."""

    key: str
    label: str
    config: dict[str, Any]


@dataclass
class Placement:
    """Where a study's runs train: how many at once, on which devices or threads, through which launcher."""

    jobs: int = 1
    devices: list[str] | None = None  # default: every visible GPU, else the CPU
    threads_per_job: int | None = None  # CPU: default cores // jobs
    launcher: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)

    def local_here(self) -> bool:
        """One run at a time with nothing asked about devices or threads: the runs train in this process."""
        return self.jobs == 1 and self.devices is None and self.threads_per_job is None

    def slots(self) -> list[dict[str, str]]:
        """The environment each of the `jobs` slots gives its process: one device, or a share of the cores."""
        if self.jobs < 1:
            raise ConfigError(f"study --jobs: {self.jobs}; allowed: >= 1")
        devices = self.devices if self.devices is not None else visible_gpus()
        if devices and any(d != "cpu" for d in devices):
            env = []
            for i in range(self.jobs):
                device = devices[i % len(devices)]
                index = device.split(":", 1)[1] if ":" in device else "0"
                env.append({"CUDA_VISIBLE_DEVICES": index, "LMLAB_STUDY_DEVICE": "cuda"})
            return env
        threads = self.threads_per_job or max(1, (os.cpu_count() or 1) // self.jobs)
        return [{"OMP_NUM_THREADS": str(threads), "LMLAB_STUDY_DEVICE": "cpu"} for _ in range(self.jobs)]


def visible_gpus() -> list[str]:
    """`cuda:i` for every GPU this process sees (none without CUDA)."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_key(label: str) -> str:
    """A label as a run tag and file name (`pos=rope seed 0` -> `pos-rope-s0`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")


class Study:
    """A study directory: its plan, each run's state and result, and the runs that are still to train."""

    def __init__(self, out: str | Path, kind: str, spec: dict[str, Any]) -> None:
        self.out, self.kind, self.spec = Path(out), kind, spec
        self.state = self.out / STATE

    # ------------------------------------------------------------------ plan

    def record_plan(self, runs: Sequence[PlannedRun]) -> None:
        """Write the plan before any run starts, or check that it is the one already there."""
        plan = {"kind": self.kind, "spec": self.spec, "runs": [vars(r) for r in runs]}
        path = self.out / PLAN
        if path.is_file():
            before = json.loads(path.read_text())
            if diff := plan_diff(before, plan):
                raise ConfigError(
                    f"study: {self.out} holds a different {before.get('kind', 'study')} plan ({'; '.join(diff)}); "
                    "use another --out, or the same command as before to finish it"
                )
            return
        self.state.mkdir(parents=True, exist_ok=True)
        _write_json(path, plan)

    def plan(self) -> dict[str, Any]:
        """The recorded plan."""
        path = self.out / PLAN
        if not path.is_file():
            raise LmlabError(f"study: {self.out} has no {PLAN}; is it a study folder (ablate or sweep --out)?")
        return json.loads(path.read_text())

    # ------------------------------------------------------------------ state

    def result(self, key: str) -> dict[str, Any] | None:
        """The finished run's result (its metrics and run directory), or None while it is not complete."""
        path = self.state / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run_state(self, key: str) -> str:
        """complete | training (a live process holds its run) | partial (a checkpoint to continue from) | started |
        pending."""
        if self.result(key) is not None:
            return "complete"
        runs = [p for p in self.out.glob(f"*_{key}") if p.is_dir()]
        if any((lock := holder(p)) is not None and stale_reason(lock) is None for p in runs):
            return "training"
        if any((p / "artifacts" / "checkpoints").glob("step_*") for p in runs):
            return "partial"
        return "started" if (self.state / f"{key}.launch.json").is_file() else "pending"

    def write_result(self, key: str, result: Any) -> dict[str, Any]:
        """Mark `key` complete with a TrainResult's metrics and run directory (atomically: all or nothing)."""
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
        record = {"key": key, "run": str(result.run.path), "metrics": metrics}
        _write_json(self.state / f"{key}.json", record)
        return record

    # ------------------------------------------------------------------ running

    def run(
        self,
        runs: Sequence[PlannedRun] | Iterator[PlannedRun],
        placement: Placement | None = None,
        *,
        train_fn: Callable | None = None,
        progress: Any = None,
        on_done: Callable[[PlannedRun, dict[str, Any] | None], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Train every run that is not complete; every run's result, by key.

        `runs` may be an iterator (a sweep's trials): the next run is drawn only when a slot is free, and
        `on_done` hears each run's result (None if it failed) as it ends.
        """
        placement = placement or Placement()
        if placement.launcher not in LAUNCHERS:
            raise ConfigError(f"study --launcher: '{placement.launcher}'; allowed: {', '.join(LAUNCHERS)}")
        self.out.mkdir(parents=True, exist_ok=True)
        with RunLock(self.out).acquire(self.kind or "study"):  # one process drives a study folder at a time
            return self._run(runs, placement, train_fn, progress, on_done)

    def _run(self, runs, placement: Placement, train_fn, progress, on_done) -> dict[str, dict[str, Any]]:
        listed = list(runs) if isinstance(runs, Sequence) else None
        if listed is not None and progress is not None:
            progress.add(listed, {r.key: self.result(r.key) for r in listed})
        seen: list[PlannedRun] = []
        todo = self._pending(iter(listed) if listed is not None else runs, seen, on_done)
        if placement.launcher != "local":
            from lmlab.pipeline.study_cluster import run_submitit

            run_submitit(self, list(todo), placement, progress, on_done, train_planned)
        elif placement.local_here():
            self._run_here(todo, train_fn, progress, on_done)
        else:
            self._run_processes(todo, placement, progress, on_done)
        missing = [r.key for r in seen if self.result(r.key) is None]
        if missing:
            raise StudyPending(
                f"study: {len(missing)} of {len(seen)} runs are not complete ({', '.join(missing[:6])}"
                f"{', ...' if len(missing) > 6 else ''}); run the same command again to finish them, "
                f"`lmlab study status {self.out}` shows each one"
            )
        return {r.key: self.result(r.key) for r in seen}

    def _pending(self, runs: Iterator[PlannedRun], seen: list, on_done) -> Iterator[PlannedRun]:
        """The runs that still need training, each given its launch config as it is drawn; one drawn complete
        (a sweep's trial queued again after its job finished) is reported done at once."""
        for r in runs:
            seen.append(r)
            if (done := self.result(r.key)) is None:
                self._write_launch(r)
                yield r
            elif on_done is not None:
                on_done(r, done)

    def _write_launch(self, r: PlannedRun) -> None:
        """The config the run trains with: resumed in place if it was started before."""
        config = json.loads(json.dumps(r.config))
        config.setdefault("train", {}).update(save_dir=str(self.out), run_tag=r.key, resume="auto")
        _write_json(self.state / f"{r.key}.launch.json", config)

    def _run_here(self, todo: Iterator[PlannedRun], train_fn: Callable | None, progress: Any, on_done) -> None:
        for r in todo:
            if progress is not None:
                progress.started(r.key, "this process", r.label)
            live = progress.callback() if progress is not None else None
            record = train_planned(self.out, r.key, train_fn=train_fn, callbacks=[live] if live else [])
            if progress is not None:
                progress.finished(r.key, record)
            if on_done is not None:
                on_done(r, record)

    def _run_processes(self, todo: Iterator[PlannedRun], placement: Placement, progress: Any, on_done) -> None:
        """At most `jobs` worker processes at once, each in its slot's environment; the first failure stops
        new launches, lets the others finish, and is reported with the end of its log."""
        slots = placement.slots()
        running: dict[int, tuple[PlannedRun, subprocess.Popen]] = {}
        failed: list[str] = []
        exhausted = False
        while running or not (exhausted or failed):
            for slot in range(len(slots)):
                if slot in running or exhausted or failed:
                    continue
                r = next(todo, None)
                if r is None:
                    exhausted = True
                    break
                running[slot] = (r, self._spawn(r, slots[slot]))
                if progress is not None:
                    progress.started(r.key, _slot_name(slots[slot], slot), r.label)
            for slot, (r, proc) in list(running.items()):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.5 / max(1, len(running)))
                if proc.returncode is None:
                    continue
                del running[slot]
                record = self.result(r.key)
                if proc.returncode != 0 or record is None:
                    failed.append(r.key)
                if progress is not None:
                    progress.finished(r.key, record)
                if on_done is not None:
                    on_done(r, record)
            if progress is not None:
                progress.refresh()
        if failed:
            log = self.state / f"{failed[0]}.log"
            tail = log.read_text().strip().splitlines()[-3:] if log.is_file() else []
            raise LmlabError(f"study: run {failed[0]} failed ({log}): " + " | ".join(tail))

    def _spawn(self, r: PlannedRun, env: dict[str, str]) -> subprocess.Popen:
        log = (self.state / f"{r.key}.log").open("ab")
        cmd = [sys.executable, "-m", "lmlab.pipeline.study", str(self.out), r.key]
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, preexec_fn=_die_with_parent
        )


def train_planned(
    out: str | Path, key: str, *, train_fn: Callable | None = None, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Train one run of the study in `out` from its launch config (continuing it if it was started), and
    mark it complete. This is what every worker process and SLURM job runs."""
    from lmlab.config import RunConfig

    study = Study(out, "", {})
    if (done := study.result(key)) is not None:
        return done
    if train_fn is None:
        from lmlab.pipeline.train import train_from_config

        train_fn = train_from_config
    config = json.loads((study.state / f"{key}.launch.json").read_text())
    if (device := os.environ.get("LMLAB_STUDY_DEVICE")) is not None:
        config["train"]["device"] = device  # the slot's device (its GPU is the only one the process sees)
    extra = study.state / f"{key}.callbacks.json"
    callbacks = [*callbacks, *([_load_callback(c) for c in json.loads(extra.read_text())] if extra.is_file() else [])]
    kwargs = {"callbacks": callbacks} if callbacks else {}
    result = train_fn(RunConfig.model_validate(config), quiet=True, **kwargs)
    return study.write_result(key, result)


def add_callback(out: str | Path, key: str, factory: str, spec: dict[str, Any]) -> None:
    """Give run `key` a trainer callback, built in whichever process trains it as `module:name(spec)`."""
    path = Path(out) / STATE / f"{key}.callbacks.json"
    listed = [c for c in json.loads(path.read_text()) if c["factory"] != factory] if path.is_file() else []
    _write_json(path, [*listed, {"factory": factory, "spec": spec}])  # a trial queued again replaces its own


def _load_callback(entry: dict[str, Any]) -> Any:
    import importlib

    module, _, name = entry["factory"].partition(":")
    return getattr(importlib.import_module(module), name)(entry["spec"])


def plan_diff(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two plans, as `field: before -> now` (a field that differs in several runs once,
    with how many; at most five)."""
    found: dict[str, list[str]] = {}

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        elif isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) for x in a + b):
            found.setdefault(f"{where}: {len(a)} -> {len(b)} entries", []).append(where)
        elif a != b:
            general = re.sub(r"^runs\[\d+\]\.config\.", "", where)  # the same change in every run: said once
            found.setdefault(f"{general}: {json.dumps(a)} -> {json.dumps(b)}", []).append(where)

    walk(before, now, "")
    lines = [line + (f" (in {len(where)} runs)" if len(where) > 1 else "") for line, where in found.items()]
    return lines[:5] + ([f"and {len(lines) - 5} more"] if len(lines) > 5 else [])


def study_status(out: str | Path) -> list[dict[str, Any]]:
    """Every planned run with its state and, once complete, its final validation loss and run directory."""
    study = Study(out, "", {})
    keys = [r["key"] for r in study.plan()["runs"]]  # a sweep plans none ahead: its trials as they launched
    keys += sorted(
        p.name[: -len(".launch.json")]
        for p in study.state.glob("*.launch.json")
        if p.name[: -len(".launch.json")] not in keys
    )
    rows = []
    for key in keys:
        done = study.result(key) or {}
        rows.append(
            {
                "run": key,
                "state": study.run_state(key),
                "val_loss": done.get("metrics", {}).get("val_loss"),
                "dir": done.get("run", ""),
            }
        )
    return rows


def _slot_name(env: dict[str, str], slot: int) -> str:
    if "CUDA_VISIBLE_DEVICES" in env:
        return f"cuda:{env['CUDA_VISIBLE_DEVICES']}"
    threads = int(env["OMP_NUM_THREADS"])
    return f"cpu job {slot} ({threads} thread{'s' if threads > 1 else ''})"


def _write_json(path: Path, data: Any) -> None:
    """Write-then-rename, so a kill never leaves half a file that reads as a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _die_with_parent() -> None:
    """Linux: a worker dies with the study process (killed with -9 or not), so no orphan keeps training."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_main(argv: Sequence[str]) -> None:
    out, key = argv
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    train_planned(out, key)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
