"""What every study command (ablate, sweep) shares on the command line: how many runs at once, on which
devices, through which launcher; and `lmlab study status DIR`."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from lmlab.errors import user_errors

STUDY_OPTIONS = [
    click.Option(
        ["-j", "--jobs"],
        type=int,
        default=None,
        help="runs side by side, each its own process; default 1, or one per device given to --devices",
    ),
    click.Option(
        ["--devices"],
        default=None,
        help="comma-separated devices the jobs bind to, one run each (cuda:0,cuda:1 or cpu); "
        "default every visible GPU, else the CPU",
    ),
    click.Option(["--threads-per-job"], type=int, default=None, help="CPU threads per job; default cores / jobs"),
    click.Option(
        ["--launcher"],
        type=click.Choice(["local", "slurm", "submitit-local"]),
        default="local",
        show_default=True,
        help="local processes, SLURM jobs through submitit ([cluster] extra), or submitit's local executor",
    ),
    click.Option(["--slurm.partition", "slurm_partition"], default=None, help="SLURM partition"),
    click.Option(["--slurm.gpus-per-node", "slurm_gpus_per_node"], type=int, default=None, help="GPUs per job"),
    click.Option(["--slurm.time", "slurm_time"], type=int, default=None, help="minutes per job"),
    click.Option(["--slurm.account", "slurm_account"], default=None, help="SLURM account to charge"),
    click.Option(
        ["--slurm.array-parallelism", "slurm_array_parallelism"],
        type=int,
        default=None,
        help="jobs of the array running at once (default --jobs)",
    ),
    click.Option(["--slurm.cpus-per-task", "slurm_cpus_per_task"], type=int, default=None, help="CPUs per job"),
    click.Option(
        ["--detach", "slurm_detach"],
        is_flag=True,
        default=False,
        help="with a submitit launcher: submit and exit; the same command again collects the results",
    ),
]


def placement(params: dict[str, Any]) -> Any:
    """The study's Placement from its options (removed from `params`, which keeps the config flags)."""
    from lmlab.pipeline.study import Placement

    slurm = {key[len("slurm_") :]: params.pop(key) for key in list(params) if key.startswith("slurm_")}
    given = params.pop("devices", None)
    devices = [d.strip() for d in given.split(",") if d.strip()] if given else None
    jobs = params.pop("jobs", None)
    return Placement(
        jobs=jobs if jobs is not None else len(devices or [None]),
        devices=devices,
        threads_per_job=params.pop("threads_per_job", None),
        launcher=params.pop("launcher", "local"),
        slurm={k: v for k, v in slurm.items() if v not in (None, False)},
    )


@contextlib.contextmanager
def pending_is_not_an_error():
    """Submitted jobs still training are a state, not a failure: say how to collect them and exit 0."""
    from lmlab.pipeline.study import StudyPending

    try:
        yield
    except StudyPending as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(0) from None


@click.group("study")
def study_group() -> None:
    """Look at a study folder (an ablate or sweep --out)."""


@study_group.command("status")
@click.argument("out")
@user_errors
def status_command(out: str) -> None:
    """Every planned run of the study in OUT: complete, partial (a checkpoint to continue from), started, pending."""
    from rich.console import Console
    from rich.table import Table

    from lmlab.pipeline.study import study_status

    rows = study_status(out)
    table = Table("run", "state", "val loss", "run directory", title=f"study {out}", title_justify="left")
    for r in rows:
        table.add_row(r["run"], r["state"], "" if r["val_loss"] is None else f"{r['val_loss']:.4f}", r["dir"])
    Console(width=200).print(table)
    done = sum(r["state"] == "complete" for r in rows)
    click.echo(f"{done}/{len(rows)} complete")
