"""Trainer features: MFU FLOPs, non-finite policies, compile fallback, activation checkpointing, callbacks."""

import math
import warnings

import numpy as np
import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.data.datasets import RandomWindowLoader
from lmlab.model.build import build_model
from lmlab.runs.checkpoint import list_checkpoints
from lmlab.track.wandb import WandBLogger
from lmlab.trainer import distributed as wrap
from lmlab.trainer.callbacks import Callback, EarlyStopping, LRDecay, LRMonitor
from lmlab.trainer.mini_trainer import MiniTrainer, causal_lm_loss
from lmlab.trainer.optim import configure_optimizer
from lmlab.utils.meters import AverageMeter, ThroughputMeter
from tests.conftest import tiny_cfg
from tests.helpers import counted_flops, decoder_presets


def _tokens(n=4000, vocab=61, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def _trainer(model=None, **kw):
    torch.manual_seed(0)
    model = model or build_model(tiny_cfg("llama"))
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.0)
    kw.setdefault("max_steps", 4)
    return MiniTrainer(
        model, opt, train_loader=RandomWindowLoader(_tokens(), 4, 16, seed=0), device="cpu", precision="fp32", **kw
    )


@pytest.mark.parametrize("preset", decoder_presets())
def test_step_flops_match_flop_counter(preset):
    cfg = ModelConfig.from_preset(preset, n_layer=2, d_model=64, n_head=4, vocab_size=100, max_seq_len=64)
    model = build_model(cfg)
    t = MiniTrainer(model, torch.optim.SGD(model.parameters(), lr=0.0), train_loader=[(None, None)], max_steps=1)
    x = torch.randint(0, 100, (2, 64))
    counted = counted_flops(lambda: causal_lm_loss(model, (x, x)).backward())
    assert abs(t.step_flops(x.numel(), 64) / counted - 1) < 0.05


def test_mfu_and_throughput_are_logged():
    seen = []

    class Grab(Callback):
        def on_batch_end(self, trainer, metrics):
            seen.append(metrics)

    t = _trainer(callbacks=[Grab()], peak_flops_override=1e12)
    t.train()
    m = seen[-1]
    expected = t.step_flops(4 * 16, 16) / m["step_time"] / 1e12
    assert m["mfu"] == pytest.approx(expected, rel=1e-6)
    assert m["tokens"] == 4 * 4 * 16 and m["flops"] == pytest.approx(4 * t.step_flops(64, 16))
    assert m["peak_mem"] > 0 and 0 <= m["data_wait"] < m["step_time"]


def _nan_at(step):
    def loss_fn(model, batch):
        loss = causal_lm_loss(model, batch)
        return loss * float("nan") if loss_fn.calls == step else loss

    def wrapped(model, batch):
        wrapped.calls += 1
        loss_fn.calls = wrapped.calls
        return loss_fn(model, batch)

    wrapped.calls = 0
    return wrapped


def test_nonfinite_skip_leaves_weights_and_counts(tmp_path):
    t = _trainer(loss_fn=_nan_at(3), nonfinite="skip", max_steps=4)
    before = {}

    class Snap(Callback):
        def on_batch_end(self, trainer, metrics):
            before[trainer.step] = [p.detach().clone() for p in trainer.raw_model.parameters()]

    t.callbacks.append(Snap())
    metrics = t.train()
    assert metrics["skipped_steps"] == 1 and t.step == 4
    for a, b in zip(before[2], before[3], strict=True):
        assert torch.equal(a, b)  # step 3 changed nothing
    assert all(torch.isfinite(p).all() for p in t.raw_model.parameters())


def test_nonfinite_stop_keeps_last_good_checkpoint_and_says_why(tmp_path):
    t = _trainer(loss_fn=_nan_at(3), nonfinite="stop", max_steps=10, ckpt_dir=tmp_path, ckpt_interval=1)
    metrics = t.train()
    assert "non-finite loss/gradient at step 3" in metrics["stopped"]
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step_00000002"
    assert all(torch.isfinite(p).all() for p in t.raw_model.parameters())


def test_compile_falls_back_with_one_warning(monkeypatch):
    def broken(model):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile unavailable, running eagerly: no C\\+\\+ compiler"):
        t = _trainer(compile=True)
    t.train()
    assert t.step == 4


def test_compile_on_cuda_without_triton_names_the_extra(monkeypatch):
    """The [fast] extra holds what torch.compile needs on CUDA and nothing else: Triton."""
    import importlib.util
    import tomllib
    from pathlib import Path

    from lmlab.trainer.distributed import missing_compiler

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert missing_compiler("cpu") is None
    assert missing_compiler("cuda") == 'torch.compile on CUDA needs Triton; install it with: pip install "lmlab[fast]"'
    extras = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert extras["optional-dependencies"]["fast"] == ["triton>=3.0"]


def test_compile_failure_at_first_call_falls_back(monkeypatch):
    class Exploding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *a, **k):
            raise RuntimeError("inductor backend crashed")

    monkeypatch.setattr(torch, "compile", lambda m: Exploding(m))
    t = _trainer(compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed, running eagerly: inductor backend crashed"):
        t.train()
    assert t.step == 4 and t.model is t._eager


@pytest.mark.parametrize("mode", ["full", "every_n"])
def test_activation_checkpointing_gives_the_same_gradients(mode):
    torch.manual_seed(0)
    cfg = tiny_cfg("llama", n_layer=4)
    plain, ckpt_model = build_model(cfg), build_model(cfg)
    ckpt_model.load_state_dict(plain.state_dict())
    assert wrap.apply_activation_checkpointing(ckpt_model, mode, every=2) == (4 if mode == "full" else 2)
    x = torch.randint(0, 61, (2, 12))
    plain(x, targets=x).loss.backward()
    ckpt_model(x, targets=x).loss.backward()
    for a, b in zip(plain.parameters(), ckpt_model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


def test_early_stopping_and_lr_decay():
    t = _trainer(
        max_steps=100, val_loader=RandomWindowLoader(_tokens(seed=1), 4, 16, seed=1), eval_interval=1, eval_iters=1
    )
    stop = EarlyStopping(patience=2)
    decay = LRDecay(factor=0.5, patience=1)
    vals = iter([3.0, 2.0, 2.5, 2.6, 2.7])
    t.evaluate = lambda: {"step": t.step, "tokens": 0, "flops": 0, "val_loss": next(vals)}
    t.callbacks += [decay, stop, LRMonitor()]
    metrics = t.train()
    assert t.step == 4 and "early stopping" in metrics["stopped"]
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)
    assert metrics["lr_group1"] == pytest.approx(1e-3 * 0.5)  # read before step 4's evaluation decayed it again


def test_wandb_logger_without_wandb_warns_once_and_training_continues(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    t = _trainer(callbacks=[WandBLogger()])
    t.train()
    assert t.step == 4
    err = capsys.readouterr().err
    assert err.count("wandb tracker disabled") == 1 and 'pip install "lmlab[track]"' in err


def test_meters():
    m = AverageMeter(window=2)
    for v in (1.0, 2.0, 6.0):
        m.update(v)
    assert m.mean == 3.0 and m.recent_mean == 4.0
    tm = ThroughputMeter()
    tm.update(100, 0.5, 0.1)
    tm.update(300, 1.5, 0.1)
    assert tm.tokens_per_s == 200.0 and tm.step_time == 1.0 and math.isclose(tm.data_wait_fraction, 0.1)


def test_resume_auto_with_nothing_says_so(tmp_path, capsys):
    t = _trainer(ckpt_dir=tmp_path, resume="auto")
    with warnings.catch_warnings():
        t.train()
    assert "no checkpoint in" in capsys.readouterr().err and t.start_step == 0


def test_cpu_peak_is_best_of_trials_and_a_low_cached_value_never_sticks(tmp_path):
    import json

    from lmlab.utils.hardware import cpu_matmul_peak

    first = cpu_matmul_peak(tmp_path, size=128, seconds=0.05)
    (path,) = tmp_path.glob("cpu_peak.json")
    key = next(iter(json.loads(path.read_text())))
    path.write_text(json.dumps({key: 1.0}))  # as if measured while the CPU was busy
    assert cpu_matmul_peak(tmp_path, size=128, seconds=0.05) == 1.0  # cached values are reused ...
    again = cpu_matmul_peak(tmp_path, size=128, seconds=0.05, fresh=True)  # ... until measured afresh
    assert again > 1.0 and first > 1.0
    path.write_text(json.dumps({key: 1e30}))
    assert cpu_matmul_peak(tmp_path, size=128, seconds=0.05, fresh=True) == 1e30  # only ever replaced upwards
