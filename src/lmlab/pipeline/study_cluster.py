"""A study's runs as SLURM jobs through submitit (or submitit's local executor): each run one job, whose
run directory is its whole state, so the study process may exit while they train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.errors import ConfigError, LmlabError, require

# SLURM states in which a job submitted by an earlier invocation will still finish by itself.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


def slurm_parameters(slurm: dict[str, Any], jobs: int) -> dict[str, Any]:
    """submitit's names for the `--slurm.*` settings (unset ones left to SLURM's defaults)."""
    names = {
        "partition": "slurm_partition",
        "gpus_per_node": "gpus_per_node",
        "time": "timeout_min",
        "account": "slurm_account",
        "array_parallelism": "slurm_array_parallelism",
        "cpus_per_task": "cpus_per_task",
        "mem_gb": "mem_gb",
    }
    unknown = sorted(set(slurm) - set(names))
    if unknown:
        raise ConfigError(f"study --slurm.{unknown[0]}: unknown; allowed: {', '.join(names)}")
    params = {names[k]: v for k, v in slurm.items() if v is not None}
    params.setdefault("slurm_array_parallelism", jobs)  # --jobs bounds how many run at once
    return params


def run_submitit(study: Any, todo: list, placement: Any, progress: Any, on_done: Any, job: Any) -> None:
    """Submit every run of `todo` not already queued by an earlier invocation as one job array, each job
    `job(out, key)`; wait for them unless `placement.slurm['detach']` (then the same command again
    collects what finished)."""
    submitit = require("submitit", "cluster")

    folder = study.state / "submitit"
    cluster = "slurm" if placement.launcher == "slurm" else "local"
    slurm = dict(placement.slurm)
    detach = bool(slurm.pop("detach", False))
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as exc:  # no srun on this machine
        raise LmlabError(f"study --launcher slurm: {exc} (run it on a SLURM login node)") from None
    params = slurm_parameters(slurm, placement.jobs) if cluster == "slurm" else {"timeout_min": slurm.get("time") or 60}
    executor.update_parameters(name=f"lmlab-{study.kind or 'study'}", **params)
    jobs, fresh, by_key = {}, [], {r.key: r for r in todo}
    for r in todo:
        queued = _queued_job(submitit, folder, study.state / f"{r.key}.job", cluster)
        if queued is not None:
            jobs[r.key] = queued
        else:
            fresh.append(r)
    if fresh:
        with executor.batch():
            submitted = [(r, executor.submit(job, str(study.out), r.key)) for r in fresh]
        for r, one in submitted:
            (study.state / f"{r.key}.job").write_text(str(one.job_id))
            jobs[r.key] = one
    for key, queued in jobs.items():
        if progress is not None:
            progress.started(key, f"job {queued.job_id}", by_key[key].label)
    if detach:  # the study's check for missing results then says how to collect them
        return
    for key, queued in jobs.items():
        try:
            queued.result()
        except Exception as exc:  # the job's own traceback is in its log
            last = str(exc).strip().splitlines()[-1]
            raise LmlabError(f"study: run {key} (job {queued.job_id}) failed: {last}") from None
        if progress is not None:
            progress.finished(key, study.result(key))
        if on_done is not None:
            on_done(by_key[key], study.result(key))


def _queued_job(submitit: Any, folder: Path, id_file: Path, cluster: str) -> Any:
    """The job an earlier invocation submitted for this run, if SLURM still has it pending or running."""
    if cluster != "slurm" or not id_file.is_file():
        return None  # a local job ended with the process that started it
    job = submitit.SlurmJob(folder=folder, job_id=id_file.read_text().strip())
    return job if job.state.split(" ")[0] in ACTIVE else None
