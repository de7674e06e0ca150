"""kill -9 at random moments (including during checkpoint writes); resuming each time ends bit-identical."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.trainer import checkpoint as ckpt
from tests.helpers import small_train_args

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_ten_kills_then_resume_equals_uninterrupted(tmp_path, corpus_file):
    common = [
        *small_train_args(
            corpus_file,
            dim=48,
            batch=8,
            max_steps=60,
            dropout=0.1,
            train__ckpt_interval=1,
            train__eval_interval=20,
            train__eval_iters=2,
            train__keep_last=2,
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every process: same float reductions
    ref = subprocess.run(
        [str(BIN / "lmlab"), "train", *common, "--save-dir", str(tmp_path / "ref")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(0)
    cmd = [
        str(BIN / "lmlab"),
        "train",
        *common,
        "--save-dir",
        str(tmp_path / "k"),
        "--run-tag",
        "k",
        "--train.resume",
        "auto",
    ]
    kills = 0
    for _ in range(10):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        time.sleep(rng.uniform(1.5, 5.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        for run in (tmp_path / "k").glob("*_k"):
            for path in ckpt.list_checkpoints(run / "artifacts/checkpoints"):
                ckpt.verify_checkpoint(path)  # no renamed checkpoint is ever partial
    assert kills >= 5
    final = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert final.returncode == 0, final.stderr
    # Every resume continued the same run (a kill during set-up can leave a partial folder, which resume skips).
    (run,) = [p for p in (tmp_path / "k").glob("*_k") if (p / "meta/full_config.json").is_file()]
    a = ckpt.read_weights(run / "artifacts/export/model.safetensors")
    (ref_run,) = (tmp_path / "ref").iterdir()
    b = ckpt.read_weights(ref_run / "artifacts/export/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
