"""torchrun on CPU (gloo): DDP and FSDP2 give the loss curve of one process with the global batch."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import lmlab_train, small_train_args


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
    single = lmlab_train([*common, "--batch", "8", "--save-dir", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr
    two = ["--batch", "4", "--train.distributed", strategy, "--save-dir", str(tmp_path / "two")]
    multi = lmlab_train([*common, *two], nproc=2)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r[:2] for r in one] == [r[:2] for r in two] and len(one) == 12
    # The two sides sum the same terms in another order (two half-batch GEMMs and an all-reduce against
    # one GEMM; one thread per process against two), so they agree to rounding, not bit for bit: the
    # bound is the worst-case fp32 error of the loss's own mean over a global batch's 8 x 32 tokens,
    # N * u relative (5e-5 at these losses). A real fault (ranks on the same rows, a rank's half of the
    # batch lost) moves the losses by 1e-3 to 2e-2, as a batch of 4 against one of 8 does here.
    tolerance = 8 * 32 * 2**-24
    for (split, step, a), (_, _, b) in zip(one, two, strict=True):
        assert abs(a - b) <= tolerance * abs(a), (split, step, a, b)
    (ckpt,) = (tmp_path / "two").glob("*/artifacts/checkpoints/step_00000010")
    assert (ckpt / "model.safetensors").is_file()  # written once, by rank 0


def _torchrun(args: list, save_dir: Path) -> subprocess.CompletedProcess:
    return lmlab_train([*args, "--save-dir", str(save_dir)], nproc=2)


@pytest.mark.slow
def test_zero1_equals_ddp_and_resumes_on_the_same_world_size(tmp_path, corpus_file):
    """ZeroRedundancyOptimizer over DDP: the same losses as DDP to 1e-5, including across a resume."""
    common = small_train_args(
        corpus_file,
        dropout=0,
        batch=4,
        train__log_interval=1,
        train__eval_interval=3,
        train__eval_iters=2,
        train__decay_steps=8,  # the same schedule for the run that stops at 5 and is resumed to 8
    )
    ddp = _torchrun([*common, "--max-steps", "8", "--train.distributed", "ddp"], tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    zero = [*common, "--train.distributed", "zero1"]
    first = _torchrun([*zero, "--max-steps", "5"], tmp_path / "zero")
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "zero").glob("2*")
    resumed = _torchrun([*zero, "--max-steps", "8", "--train.resume", str(run)], tmp_path / "zero")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "step 5" in resumed.stderr

    def train_losses(root: Path) -> dict[int, float]:
        return {step: loss for split, step, loss in _losses(root) if split == "train"}

    a, b = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "zero")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    state = torch.load(run / "artifacts" / "checkpoints" / "step_00000008" / "state.pt", weights_only=False)
    optimizer = state["optimizer"]  # consolidated on rank 0: both ranks' shards of the AdamW state
    assert state["world_size"] == 2 and len(optimizer["state"]) == sum(
        len(g["params"]) for g in optimizer["param_groups"]
    )
