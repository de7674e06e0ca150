"""A study's wall time: serial, with --jobs, and the ideal, measured in one run.

A 2-variant x 3-seed ablation at laptop scale (4L-4H-128D, context 128, batch 16) on the built-in
corpus is trained three ways, each into its own folder:

- serial: `lmlab ablate` as it runs by default (one run after another, in one process, every core);
- parallel: `--jobs J --threads-per-job T`, each run its own process;
- one run alone on T threads in its own process, the same way a job runs, so that
  ideal = that time x runs / J.

It prints the three wall times, parallel / ideal, and whether the two studies report the same numbers
(bit for bit when both give each run the same threads; otherwise CPU reductions split differently and
the losses agree to rounding).

    python bench/study_parallel.py [--jobs 2] [--threads-per-job 1] [--steps 100] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lmlab.pipeline.ablate import run_ablation
from lmlab.pipeline.study import Placement, PlannedRun, Study


def overrides(steps: int, data: str | None) -> dict:
    """Laptop scale (the ablate defaults) for `steps` steps, ten evaluations of 10 batches."""
    train = {"max_steps": steps, "eval_iters": 10, "eval_interval": max(1, steps // 10)}
    return {"train": train, **({"data": {"name": data}} if data else {})}


def timed_study(out: Path, seeds: int, steps: int, data: str | None, placement: Placement | None) -> tuple[float, dict]:
    """Wall seconds of the ablation and its report."""
    t0 = time.perf_counter()
    report = run_ablation(
        "gpt2", ["pos=rope"], seeds=seeds, save_dir=out, overrides=overrides(steps, data), placement=placement
    )
    return time.perf_counter() - t0, report


def one_run_alone(out: Path, serial: Path, threads: int) -> float:
    """Wall seconds of the serial study's first run trained again alone, as a job runs it (its own process)."""
    first = json.loads((serial / "study.json").read_text())["runs"][0]
    study = Study(out, "bench", {})
    run = PlannedRun(first["key"], first["label"], first["config"])
    study.record_plan([run])
    t0 = time.perf_counter()
    study.run([run], Placement(jobs=1, threads_per_job=threads))
    return time.perf_counter() - t0


def measure(jobs: int, threads: int, steps: int, seeds: int, data: str | None) -> dict:
    """Wall seconds of the serial study, the parallel one and the ideal, and the largest loss difference."""
    with tempfile.TemporaryDirectory(prefix="lmlab-study-bench-") as tmp:
        root = Path(tmp)
        serial_s, serial = timed_study(root / "serial", seeds, steps, data, None)
        placement = Placement(jobs=jobs, threads_per_job=threads)
        parallel_s, parallel = timed_study(root / "parallel", seeds, steps, data, placement)
        alone_s = one_run_alone(root / "alone", root / "serial", threads)
    runs = 2 * seeds
    diffs = [
        abs(a - b)
        for ra, rb in zip(serial["rows"], parallel["rows"], strict=True)
        for a, b in zip(ra["losses"], rb["losses"], strict=True)
    ]
    return {
        "runs": runs,
        "jobs": jobs,
        "threads": threads,
        "serial_s": serial_s,
        "parallel_s": parallel_s,
        "alone_s": alone_s,
        "ideal_s": alone_s * runs / jobs,
        "max_loss_diff": max(diffs),
    }


def table(m: dict) -> list[str]:
    """The three wall times against the ideal, as Markdown."""
    ideal = m["ideal_s"]
    return [
        "| study | wall s | vs ideal |",
        "| --- | ---: | ---: |",
        f"| serial (one process, every core) | {m['serial_s']:.1f} | {m['serial_s'] / ideal:.2f}x |",
        f"| `--jobs {m['jobs']} --threads-per-job {m['threads']}` | {m['parallel_s']:.1f} | "
        f"**{m['parallel_s'] / ideal:.2f}x** |",
        f"| ideal: one run alone on {m['threads']} thread(s) ({m['alone_s']:.1f} s) x {m['runs']} / {m['jobs']} "
        f"| {ideal:.1f} | 1.00x |",
    ]


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads-per-job", type=int, default=None, help="default cores / jobs")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data", default=None, help="corpus (default the built-in one)")
    args = ap.parse_args()
    threads = args.threads_per_job or max(1, (os.cpu_count() or 1) // args.jobs)
    m = measure(args.jobs, threads, args.steps, args.seeds, args.data)
    print(f"{m['runs']} runs (2 variants x {args.seeds} seeds, {args.steps} steps each), {os.cpu_count()} cores")
    print("\n".join(table(m)))
    print(
        f"parallel within {100 * (m['parallel_s'] / m['ideal_s'] - 1):+.1f}% of ideal; "
        f"serial / parallel {m['serial_s'] / m['parallel_s']:.2f}x"
    )
    print(f"largest difference between the two studies' final losses: {m['max_loss_diff']:.2g}")


if __name__ == "__main__":
    main()
