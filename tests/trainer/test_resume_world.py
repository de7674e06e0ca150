"""A checkpoint written by N processes resumes on M (DDP and FSDP2, gloo on CPU).

Batch and grad_accum are re-split so the global batch stays, the data position is the rows consumed, and
the continued run equals an uninterrupted one with that global batch. `test_distributed` shows that an
uninterrupted run has the same curve at every world size, so one single-process run is the reference here.
"""

import json
import shutil
from pathlib import Path

import pytest

from lmlab.pipeline.train import split_batch
from tests.conftest import varied_text
from tests.helpers import lmlab_train, small_train_args

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume_world")]

# The bound of test_distributed: the fp32 error of the loss's mean over a global batch of 8 x 32 tokens.
TOLERANCE = 8 * 32 * 2**-24


def _curve(run: Path) -> dict[tuple[str, int], float]:
    rows = map(json.loads, (run / "logs" / "metrics.jsonl").open())
    return {(r["split"], r["step"]): r.get("loss", r.get("val_loss")) for r in rows}


class Lab:
    """One corpus and config; runs launched once per module and copied before each resume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        corpus = root / "corpus.txt"
        corpus.write_text(varied_text())
        self.common = small_train_args(
            corpus,
            dropout=0,
            train__log_interval=1,
            train__eval_interval=3,
            train__eval_iters=2,
            train__decay_steps=6,  # the schedule of the full run for the runs that stop at 3
        )
        self.origins: dict[tuple[str, int], Path] = {}

    def train(self, name: str, *, nproc: int, strategy: str, batch: int, accum: int, steps: int) -> Path:
        split = ["--batch", str(batch), "--train.grad_accum", str(accum), "--train.distributed", strategy]
        args = [*self.common, *split, "--max-steps", str(steps), "--save-dir", str(self.root / name)]
        done = lmlab_train(args, nproc=nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        (run,) = (self.root / name).glob("2*")
        return run

    def origin(self, strategy: str, world: int) -> Path:
        """A run of 3 steps at `world` processes with a global batch of 8 rows."""
        if (strategy, world) not in self.origins:
            batch, accum = (4, 2) if world == 1 else (8 // world, 1)
            run = self.train(f"{strategy}{world}", nproc=world, strategy=strategy, batch=batch, accum=accum, steps=3)
            self.origins[strategy, world] = run
        return self.origins[strategy, world]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    return Lab(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def reference(lab: Lab) -> dict:
    """The uninterrupted run: one process, 6 steps of 4 rows x 2 micro-batches."""
    return _curve(lab.train("reference", nproc=1, strategy="none", batch=4, accum=2, steps=6))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize(("then", "now"), [(2, 1), (1, 2), (2, 4)])
def test_a_checkpoint_resumes_at_another_world_size(lab, reference, strategy, then, now):
    origin = lab.origin("none" if then == 1 else strategy, then)  # one process trains without either
    run = lab.root / f"{strategy}{then}to{now}" / origin.name
    shutil.copytree(origin, run)
    # The command that started the origin, at the new world size: the split is the resume's to choose.
    batch, accum = (4, 2) if then == 1 else (8 // then, 1)
    args = ["--batch", str(batch), "--train.grad_accum", str(accum), "--train.distributed", strategy]
    resumed = lmlab_train([*lab.common, *args, "--max-steps", "6", "--train.resume", str(run)], nproc=now)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want_batch, want_accum = split_batch(batch, accum, then, now)
    assert f"written by {then} processes, now {now}: the global batch of 8 rows stays" in resumed.stderr
    assert f"(batch {want_batch}, grad_accum {want_accum} per process)" in resumed.stderr
    assert "resuming" in resumed.stderr and "step 3" in resumed.stderr
    curve = _curve(run)
    assert sorted(curve) == sorted(reference)  # train steps 1-6, evaluations at 3 and 6: nothing lost or repeated
    for key, want in reference.items():
        assert abs(curve[key] - want) <= TOLERANCE * abs(want), (key, curve[key], want)
    (record,) = [json.loads(line) for line in (run / "meta" / "resumes.jsonl").open()]
    assert record["step"] == 3


def test_the_split_keeps_the_global_batch_or_says_it_cannot():
    assert split_batch(4, 1, 2, 1) == (4, 2)  # one process: two micro-batches of the old per-rank size
    assert split_batch(4, 2, 1, 2) == (4, 1)
    assert split_batch(4, 1, 2, 4) == (2, 1)
    assert split_batch(4, 1, 4, 2) == (4, 2)
    assert split_batch(6, 1, 1, 4) is None  # 6 rows do not split over 4 processes
    batch, accum = split_batch(5, 3, 2, 3)  # 30 rows on 3 processes: 10 each, micro-batches of at most 5
    assert batch * accum == 10 and batch <= 5
