"""torchrun on CPU (gloo): DDP and FSDP2 give the loss curve of one process with the global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import small_train_args

BIN = Path(sys.executable).parent


def _losses(root: Path) -> list[tuple[str, int, float]]:
    (metrics,) = root.glob("*/logs/metrics.jsonl")
    return [(r["split"], r["step"], r.get("loss", r.get("val_loss"))) for r in map(json.loads, metrics.open())]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_double_batch(strategy, tmp_path, corpus_file):
    common = [
        *small_train_args(
            corpus_file, max_steps=10, dropout=0, train__log_interval=1, train__eval_interval=5, train__eval_iters=2
        ),
    ]
    single = subprocess.run(
        [str(BIN / "lmlab"), "train", *common, "--batch", "8", "--save-dir", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "-m",
            "lmlab",
            "train",
            *common,
            "--batch",
            "4",
            "--train.distributed",
            strategy,
            "--save-dir",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r[:2] for r in one] == [r[:2] for r in two] and len(one) == 12
    for (split, step, a), (_, _, b) in zip(one, two, strict=True):
        assert abs(a - b) < 1e-5, (split, step, a, b)
    (ckpt,) = (tmp_path / "two").glob("*/artifacts/checkpoints/step_00000010")
    assert (ckpt / "model.safetensors").is_file()  # written once, by rank 0
