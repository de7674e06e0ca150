"""kill -9 at observed moments (including during checkpoint writes); resuming each time ends bit-identical.

No kill waits on the clock: each run prints a line per step, the test reads them and kills the
process as soon as it reports a step chosen at random past the step it resumed from. The
process is then inside that step's checkpoint write or the next step, on any machine speed.
"""

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.runs import checkpoint as ckpt
from tests.helpers import small_train_args

BIN = Path(sys.executable).parent
STEPS = 60
STEP_LINE = re.compile(r"^step (\d+)/\d+ \|")


def _latest_step(root: Path) -> int:
    """The step of the newest complete checkpoint of the killed run (0 before the first)."""
    for run in root.glob("*_k"):
        latest = ckpt.latest_valid(run / "artifacts/checkpoints")
        if latest is not None:
            return int(latest.name.removeprefix(ckpt.PREFIX))
    return 0


def _run_until_step(cmd: list[str], env: dict, target: int) -> int | None:
    """Start training, kill -9 it when it reports step `target`; the reported step, or None if it ended first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    killed_at = None
    for line in proc.stderr:
        match = STEP_LINE.match(line)
        if match and int(match.group(1)) >= target:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = int(match.group(1))
            break
    proc.stderr.close()
    proc.wait()
    return killed_at


@pytest.mark.slow
def test_ten_kills_then_resume_equals_uninterrupted(tmp_path, corpus_file, record_property):
    common = [
        *small_train_args(
            corpus_file,
            dim=48,
            batch=8,
            max_steps=STEPS,
            dropout=0.1,
            train__ckpt_interval=1,
            train__eval_interval=20,
            train__eval_iters=2,
            train__keep_last=2,
            train__log_interval=1,
        ),
    ]
    common.remove("--no-progress")  # the step lines on stderr are what the test watches
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every process: same float reductions
    ref = subprocess.run(
        [str(BIN / "lmlab"), "train", *common, "--save-dir", str(tmp_path / "ref")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(0)
    cmd = [str(BIN / "lmlab"), "train", *common, "--save-dir", str(tmp_path / "k"), "--run-tag", "k"]
    cmd += ["--train.resume", "auto"]
    kills: list[tuple[int, int]] = []  # (resumed from, killed at)
    for _ in range(10):
        start = _latest_step(tmp_path / "k")
        target = start + rng.randint(1, 5)  # ten kills of at most five steps each stay inside the 60 steps
        killed_at = _run_until_step(cmd, env, target)
        assert killed_at is not None and killed_at < STEPS, f"the run ended before step {target}"
        kills.append((start, killed_at))
        for run in (tmp_path / "k").glob("*_k"):
            for path in ckpt.list_checkpoints(run / "artifacts/checkpoints"):
                ckpt.verify_checkpoint(path)  # no renamed checkpoint is ever partial
    report = f"{len(kills)} kills, (resumed from, killed at step): {kills}"
    record_property("report", report)  # printed in the session summary (conftest.py)
    print(report)
    assert len(kills) >= 5
    final = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert final.returncode == 0, final.stderr
    (run,) = [p for p in (tmp_path / "k").glob("*_k") if (p / "meta/full_config.json").is_file()]
    a = ckpt.read_weights(run / "artifacts/export/model.safetensors")
    (ref_run,) = (tmp_path / "ref").iterdir()
    b = ckpt.read_weights(ref_run / "artifacts/export/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
