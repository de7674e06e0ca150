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
    with tempfile.TemporaryDirectory(prefix="lmlab-study-bench-") as tmp:
        root = Path(tmp)
        serial_s, serial = timed_study(root / "serial", args.seeds, args.steps, args.data, None)
        parallel_s, parallel = timed_study(
            root / "parallel",
            args.seeds,
            args.steps,
            args.data,
            Placement(jobs=args.jobs, threads_per_job=threads),
        )
        alone_s = one_run_alone(root / "alone", root / "serial", threads)
    runs = 2 * args.seeds
    ideal_s = alone_s * runs / args.jobs
    diffs = [
        abs(a - b)
        for ra, rb in zip(serial["rows"], parallel["rows"], strict=True)
        for a, b in zip(ra["losses"], rb["losses"], strict=True)
    ]
    print(f"{runs} runs (2 variants x {args.seeds} seeds, {args.steps} steps each), {os.cpu_count()} cores")
    print("| study | wall s | vs ideal |")
    print("| --- | ---: | ---: |")
    print(f"| serial (one process, every core) | {serial_s:.1f} | {serial_s / ideal_s:.2f}x |")
    print(f"| --jobs {args.jobs} --threads-per-job {threads} | {parallel_s:.1f} | {parallel_s / ideal_s:.2f}x |")
    print(
        f"| ideal (one run alone on {threads} threads: {alone_s:.1f} s) x {runs} / {args.jobs} | {ideal_s:.1f} | 1.00x |"
    )
    print(
        f"parallel within {100 * (parallel_s / ideal_s - 1):+.1f}% of ideal; serial / parallel {serial_s / parallel_s:.2f}x"
    )
    print(f"largest difference between the two studies' final losses: {max(diffs):.2g}")


if __name__ == "__main__":
    main()
