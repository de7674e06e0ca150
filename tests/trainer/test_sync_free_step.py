"""A step between logs never reads a tensor back: losses and gradient norms add up on the device, and the
log step reports their interval mean. Counted here by intercepting every tensor-to-Python conversion."""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from lmlab.data.datasets import RandomWindowLoader
from lmlab.model.build import build_model
from lmlab.trainer.callbacks import Callback
from lmlab.trainer.mini_trainer import MiniTrainer, causal_lm_loss
from lmlab.trainer.optim import configure_optimizer
from tests.conftest import tiny_cfg

T = torch.Tensor
READS = {T.item, T.__float__, T.__int__, T.__bool__, T.__index__, T.__format__, T.tolist, T.numpy}


class CountReads(TorchFunctionMode):
    """Every conversion of a tensor to a Python value (each one a host sync on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _tokens(n=2000, vocab=61, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def _trainer(*, fused: str, nonfinite: str = "skip", loss_fn=causal_lm_loss, sgd=False, **kw) -> MiniTrainer:
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if sgd else configure_optimizer(model, lr=3e-3, weight_decay=0.1)
    settings = dict(max_steps=8, log_interval=4, device="cpu", precision="fp32", grad_accum=2)
    return MiniTrainer(
        model,
        opt,
        loss_fn,
        RandomWindowLoader(_tokens(), 4, 16, seed=1),
        fused_adamw=fused,
        nonfinite=nonfinite,
        **{**settings, **kw},
    )


def _reads_per_step(trainer: MiniTrainer) -> dict[int, list[str]]:
    """Run the loop one step at a time, counting reads in each step and its bookkeeping. The batches are drawn
    first: the loader's own work runs on the host on any device, so its numpy calls are no syncs."""
    draws = trainer._batches()
    batches, reads = iter([next(draws) for _ in range(trainer.total_steps * trainer.grad_accum)]), {}
    trainer._t_start = 0.0
    while trainer.step < trainer.total_steps:
        with CountReads() as counter:
            trainer.after_step(trainer.train_step(batches), 0.1)
        reads[trainer.step] = counter.reads
    return reads


def test_a_step_between_logs_reads_nothing_back_with_a_fused_optimizer():
    """Fused AdamW (the CUDA default) skips a non-finite step on the device: no read at all between logs."""
    trainer = _trainer(fused="on")
    assert trainer.device_skip
    reads = _reads_per_step(trainer)
    assert [reads[s] for s in (1, 2, 3, 5, 6, 7)] == [[]] * 6
    assert reads[4] == ["tolist"] and reads[8] == ["tolist"]  # the log steps: one transfer each


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_host_decided_policy_costs_exactly_one_read_per_step(policy):
    """Where the host must know whether the step happened (an optimizer without a fused kernel, or `stop`), that
    is the one sync. (SGD here: a foreach Adam's step counters live on the host even on a GPU, so their reads
    are no syncs, yet this CPU count would see them.)"""
    trainer = _trainer(fused="on", nonfinite=policy, sgd=policy == "skip")
    assert not trainer.device_skip
    reads = _reads_per_step(trainer)
    assert reads[1] == ["__bool__"] and reads[4] == ["__bool__", "tolist"]


def test_the_logged_loss_is_the_mean_of_the_interval_and_grad_norm_too():
    steps = {}

    class Grab(Callback):
        def on_batch_end(self, trainer, metrics):
            steps[trainer.step] = dict(metrics)

    trainer = _trainer(fused="off", callbacks=[Grab()])
    own = {}
    batches = trainer._batches()
    trainer._t_start = 0.0
    for _ in range(8):
        result = trainer.train_step(batches)
        own[trainer.step + 1] = (float(result.loss), float(result.grad_norm))
        trainer.after_step(result, 0.1)
    assert isinstance(steps[3]["loss"], torch.Tensor) and float(steps[3]["loss"]) == own[3][0]
    for log_step in (4, 8):
        window = [own[s] for s in range(log_step - 3, log_step + 1)]
        assert steps[log_step]["loss"] == pytest.approx(np.mean([w[0] for w in window]), rel=1e-6)
        assert steps[log_step]["grad_norm"] == pytest.approx(np.mean([w[1] for w in window]), rel=1e-6)
    assert trainer.loss_meter.count == 8


def _nan_at(step):
    def loss_fn(model, batch):
        loss_fn.calls += 1
        loss = causal_lm_loss(model, batch)
        return loss * float("nan") if (loss_fn.calls + 1) // 2 == step else loss  # both micro-batches of `step`

    loss_fn.calls = 0
    return loss_fn


def test_a_device_side_skip_is_exact_and_counted_at_the_log():
    """Step 3 is non-finite: the fused optimizer leaves weights and its own state (moments, step count) as
    they were, the interval mean leaves it out, and the log reports one skipped step."""
    trainer = _trainer(fused="on", loss_fn=_nan_at(3))
    batches = trainer._batches()
    trainer._t_start = 0.0
    for _ in range(2):
        trainer.after_step(trainer.train_step(batches), 0.1)
    weights = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    moments = {k: {n: t.clone() for n, t in s.items()} for k, s in trainer.optimizer.state_dict()["state"].items()}
    result = trainer.train_step(batches)
    assert isinstance(result.finite, torch.Tensor) and not result.finite
    assert all(torch.equal(v, weights[k]) for k, v in trainer.raw_model.state_dict().items())
    for k, state in trainer.optimizer.state_dict()["state"].items():
        assert all(torch.equal(t, moments[k][n]) for n, t in state.items())
    trainer.after_step(result, 0.1)
    metrics = trainer.after_step(trainer.train_step(batches), 0.1)
    assert metrics["skipped_steps"] == 1 and np.isfinite(metrics["loss"])


def test_resuming_mid_interval_logs_the_same_mean(tmp_path):
    """The open interval's sums travel in the checkpoint: stopped at step 2 and resumed, step 4 logs the same."""
    logged = {}

    class Grab(Callback):
        def __init__(self, stop_at=None):
            self.stop_at = stop_at

        def on_batch_end(self, trainer, metrics):
            if trainer.step % 4 == 0:
                logged.setdefault(trainer.ckpt_dir.name, {})[trainer.step] = metrics["loss"]
            if trainer.step == self.stop_at:
                trainer.should_stop = "stopped to resume"

    _trainer(fused="off", ckpt_dir=tmp_path / "whole", callbacks=[Grab()]).train()
    _trainer(fused="off", ckpt_dir=tmp_path / "split", ckpt_interval=2, callbacks=[Grab(stop_at=2)]).train()
    _trainer(fused="off", ckpt_dir=tmp_path / "split", resume="auto", callbacks=[Grab()]).train()
    assert logged["split"] == logged["whole"] and set(logged["whole"]) == {4, 8}
