"""kill -9 at chosen moments (inside steps, checkpoint writes and prunes); resuming each time ends bit-identical.

No kill depends on the clock or on how fast a reader keeps up: the training process counts its own
events (a step starting, each fsync, replace, rename and folder deletion of the checkpoint code) and
sends itself SIGKILL just before the n-th event of the kind the test picked. The kernel ends it there,
with no handler run, as a `kill -9` from outside would. Kinds take turns and n comes from a seeded
generator, so every run of the test kills at the same places, on any machine, and every kind is hit.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lmlab.runs import checkpoint as ckpt
from tests.helpers import small_train_args

BIN = Path(sys.executable).parent
STEPS = 60
KINDS = ("step", "fsync", "replace", "rename", "rmtree")  # each happens at least once per step and checkpoint
PER_KILL = 4  # the n-th event of its kind, n <= 4: a kill lands within four steps

KILLER = textwrap.dedent(
    """
    import os, pathlib, shutil, signal, sys
    from lmlab.runs import checkpoint
    from lmlab.trainer.mini_trainer import MiniTrainer

    kind, target = sys.argv.pop(1), int(sys.argv.pop(1))
    count = {}

    def event(name, fn, only_from=None):
        def counted(*args, **kwargs):
            if only_from and sys._getframe(1).f_globals.get("__name__") != only_from:
                return fn(*args, **kwargs)  # the same call elsewhere (logs, the lock) is not a checkpoint event
            count[name] = count.get(name, 0) + 1
            if name == kind and count[name] == target:
                print(f"killed before {name}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)  # not returned from
            return fn(*args, **kwargs)
        return counted

    checkpoint._fsync = event("fsync", checkpoint._fsync)
    checkpoint.os.replace = event("replace", os.replace, checkpoint.__name__)
    pathlib.Path.rename = event("rename", pathlib.Path.rename, checkpoint.__name__)
    shutil.rmtree = event("rmtree", shutil.rmtree, checkpoint.__name__)
    MiniTrainer.train_step = event("step", MiniTrainer.train_step)
    from lmlab.cli.app import main
    sys.argv[0] = "lmlab"
    main()
    """
)


def _latest_step(root: Path) -> int:
    """The step of the newest complete checkpoint of the killed run (0 before the first)."""
    for run in root.glob("*_k"):
        latest = ckpt.latest_valid(run / "artifacts/checkpoints")
        if latest is not None:
            return int(latest.name.removeprefix(ckpt.PREFIX))
    return 0


@pytest.mark.slow
def test_ten_kills_then_resume_equals_uninterrupted(tmp_path, corpus_file, record_property):
    common = small_train_args(
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
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every process: same float reductions
    ref = subprocess.run(
        [str(BIN / "lmlab"), "train", *common, "--save-dir", str(tmp_path / "ref")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(0)
    args = ["train", *common, "--save-dir", str(tmp_path / "k"), "--run-tag", "k", "--train.resume", "auto"]
    kills: list[tuple[int, str]] = []  # (resumed from step, the event killed before)
    for i in range(10):
        start = _latest_step(tmp_path / "k")
        kind, target = KINDS[i % len(KINDS)], rng.randint(1, PER_KILL)  # every kind, twice
        proc = subprocess.run([sys.executable, "-c", KILLER, kind, str(target), *args], capture_output=True, env=env)
        assert proc.returncode == -signal.SIGKILL, f"the run was not killed at {kind} {target}: {proc.stderr[-2000:]}"
        kills.append((start, proc.stderr.decode().rsplit("killed before ", 1)[-1].strip()))
        for run in (tmp_path / "k").glob("*_k"):
            for path in ckpt.list_checkpoints(run / "artifacts/checkpoints"):
                ckpt.verify_checkpoint(path)  # no listed checkpoint is ever partial, written or deleted
    report = f"{len(kills)} kills, (resumed from step, killed before): {kills}"
    record_property("report", report)  # printed in the session summary (conftest.py)
    print(report)
    assert _latest_step(tmp_path / "k") > 10  # the kills fell inside training, past several checkpoints
    assert [event for _, event in kills] == [KINDS[i % len(KINDS)] for i in range(10)]
    final = subprocess.run([str(BIN / "lmlab"), *args], capture_output=True, text=True, env=env)
    assert final.returncode == 0, final.stderr
    (run,) = [p for p in (tmp_path / "k").glob("*_k") if (p / "meta/full_config.json").is_file()]
    a = ckpt.read_weights(run / "artifacts/export/model.safetensors")
    (ref_run,) = (tmp_path / "ref").iterdir()
    b = ckpt.read_weights(ref_run / "artifacts/export/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
