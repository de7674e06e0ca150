import math

import numpy as np
import pytest
import torch

from lmlab.data.datasets import RandomWindowLoader
from lmlab.model.build import build_model
from lmlab.trainer.callbacks import Callback
from lmlab.trainer.mini_trainer import MiniTrainer
from lmlab.trainer.optim import configure_optimizer
from lmlab.trainer.schedules import warmup_cosine, warmup_cosine_scheduler
from lmlab.utils import hardware
from tests.conftest import tiny_cfg


class Recorder(Callback):
    def __init__(self):
        self.losses, self.evals = [], []

    def on_batch_end(self, trainer, metrics):
        self.losses.append(metrics["loss"])

    def on_eval_end(self, trainer, metrics):
        self.evals.append(metrics["val_loss"])


def _tokens(n=4000, vocab=61, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def _trainer(tmp_path, max_steps, *, resume=None, total=12, recorder=None, dropout=0.1):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", dropout=dropout))
    opt = configure_optimizer(model, lr=3e-3, weight_decay=0.1)
    sched = warmup_cosine_scheduler(opt, warmup=3, decay_steps=total, min_ratio=0.1)
    return MiniTrainer(
        model,
        opt,
        train_loader=RandomWindowLoader(_tokens(), 4, 16, seed=1),
        val_loader=RandomWindowLoader(_tokens(seed=1), 4, 16, seed=2),
        max_steps=max_steps,
        device="cpu",
        precision="fp32",
        scheduler=sched,
        callbacks=[recorder] if recorder else [],
        ckpt_dir=tmp_path,
        eval_interval=4,
        eval_iters=2,
        resume=resume,
    )


def test_resume_reproduces_uninterrupted_run_bit_for_bit(tmp_path):
    full_rec = Recorder()
    full = _trainer(tmp_path / "full", 12, recorder=full_rec)
    full.train()
    first_rec, second_rec = Recorder(), Recorder()
    _trainer(tmp_path / "split", 8, recorder=first_rec).train()
    resumed = _trainer(tmp_path / "split", 12, resume="auto", recorder=second_rec)
    resumed.train()
    assert resumed.start_step == 8
    assert first_rec.losses + second_rec.losses == full_rec.losses
    assert first_rec.evals + second_rec.evals == full_rec.evals
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_grad_accumulation_equals_large_batch():
    torch.manual_seed(0)
    cfg = tiny_cfg("llama")
    base = build_model(cfg)
    x = torch.randint(0, 61, (8, 16))
    y = torch.randint(0, 61, (8, 16))

    def one_step(batches, accum):
        model = build_model(cfg)
        model.load_state_dict(base.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        grads = {}

        class Grab(Callback):
            pass

        trainer = MiniTrainer(
            model,
            opt,
            train_loader=batches,
            max_steps=1,
            grad_accum=accum,
            clip_grad=None,
            device="cpu",
            precision="fp32",
            callbacks=[Grab()],
        )
        trainer.train()
        for (name, p), p0 in zip(model.named_parameters(), base.parameters(), strict=True):
            grads[name] = p0.detach() - p.detach()  # SGD with lr=1: the step is the gradient
        return grads

    g_big = one_step([(x, y)], 1)
    g_acc = one_step([(x[:4], y[:4]), (x[4:], y[4:])], 2)
    for name in g_big:
        torch.testing.assert_close(g_acc[name], g_big[name], atol=1e-5, rtol=1e-4, msg=name)


def test_training_reduces_loss_on_repetitive_data(tmp_path):
    pattern = np.tile(np.arange(20, dtype=np.uint16), 300)
    torch.manual_seed(0)
    model = build_model(tiny_cfg("gpt2", vocab_size=20))
    opt = configure_optimizer(model, lr=3e-3, weight_decay=0.0)
    rec = Recorder()
    trainer = MiniTrainer(
        model,
        opt,
        train_loader=RandomWindowLoader(pattern, 8, 16, seed=0),
        val_loader=RandomWindowLoader(pattern, 8, 16, seed=1),
        max_steps=150,
        device="cpu",
        precision="fp32",
        callbacks=[rec],
        eval_interval=150,
        eval_iters=4,
    )
    trainer.train()
    assert rec.losses[0] > 2.5
    assert rec.evals[-1] < 0.1  # the cycle is fully predictable after its first token


def test_epochs_define_total_steps():
    loader = RandomWindowLoader(_tokens(), 4, 16, seed=0)  # 3999 // 64 = 62 batches per epoch
    model = build_model(tiny_cfg("llama"))
    t = MiniTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), train_loader=loader, epochs=2, grad_accum=2)
    assert t.total_steps == 2 * math.ceil(62 / 2)
    t2 = MiniTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), train_loader=loader, epochs=2, max_steps=5)
    assert t2.total_steps == 5


def test_accepts_any_torch_lr_scheduler():
    model = build_model(tiny_cfg("llama"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    trainer = MiniTrainer(model, opt, train_loader=RandomWindowLoader(_tokens(), 2, 8), max_steps=4, device="cpu")
    trainer.scheduler = sched
    trainer.train()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)


def test_warmup_cosine_shape():
    f = lambda s: warmup_cosine(s, warmup=10, decay_steps=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 200))


def test_auto_precision_never_picks_bf16_on_cpu_without_native_support(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert hardware.resolve_precision("auto", cpu) == "bf16"
    assert hardware.resolve_precision("fp16", cpu) == "fp16"
    assert hardware.resolve_device("auto").type in ("cpu", "cuda", "mps")


def test_gpu_peak_table_lookup():
    assert hardware.gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert hardware.gpu_peak_flops("NVIDIA GeForce RTX 4090", "fp32") == 82.6e12
    assert hardware.gpu_peak_flops("Mystery GPU", "bf16") is None


def test_moe_aux_loss_and_router_stats_reach_the_metrics(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", ffn="moe", moe={"n_experts": 4, "top_k": 2}))
    seen = []

    class Grab(Callback):
        def on_batch_end(self, trainer, metrics):
            seen.append(metrics)

    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.0)
    MiniTrainer(
        model, opt, train_loader=RandomWindowLoader(_tokens(), 4, 16), max_steps=2, device="cpu", callbacks=[Grab()]
    ).train()
    assert sum(seen[-1]["tokens_per_expert"]["layer0"]) == 4 * 16 * 2
    x, y = RandomWindowLoader(_tokens(), 4, 16).sample()
    model.train()
    out = model(x, targets=y)
    from lmlab.trainer.mini_trainer import causal_lm_loss

    loss = causal_lm_loss(model, (x, y))
    assert loss.item() == pytest.approx((out.loss + out.aux_loss).item(), rel=1e-5)


def test_from_config_takes_every_train_setting_and_steps_compose_the_loop(tmp_path):
    from lmlab.config import TrainConfig

    cfg = TrainConfig(max_steps=3, grad_accum=2, clip_grad=0.5, eval_interval=2, eval_iters=1, device="cpu")
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama"))
    opt = configure_optimizer(model, lr=3e-3, weight_decay=0.1)
    loader = RandomWindowLoader(_tokens(), 4, 16, seed=1)
    trainer = MiniTrainer.from_config(cfg, model, opt, train_loader=loader, val_loader=loader, ckpt_dir=tmp_path)
    assert (trainer.grad_accum, trainer.clip_grad, trainer.eval_interval, trainer.total_steps) == (2, 0.5, 2, 3)
    assert trainer.ckpt_interval == 2 and trainer.nonfinite == "skip" and str(trainer.device) == "cpu"
    # train_step is one optimizer step; after_step counts it and evaluates/checkpoints when due
    trainer._t_start = 0.0
    batches = trainer._batches()
    step = trainer.train_step(batches)
    assert step.finite and step.n_tokens == 2 * 4 * 16 and trainer.step == 0
    metrics = trainer.after_step(step, 0.1)
    assert trainer.step == 1 and metrics["loss"] == step.loss and "val_loss" not in metrics
    metrics = trainer.after_step(trainer.train_step(batches), 0.1)
    assert "val_loss" in metrics and (tmp_path / "step_00000002").is_dir()


def test_a_short_validation_split_wraps_around_and_never_reads_as_zero():
    """A val split of one batch per epoch, read 3 batches at a time by 4 evaluations: every loss is a real one."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", dropout=0.0))
    val = RandomWindowLoader(_tokens(80), 4, 16, seed=2)
    assert len(val) == 1
    rec = Recorder()
    trainer = MiniTrainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),  # weights fixed: every evaluation sees the same model
        train_loader=RandomWindowLoader(_tokens(), 4, 16, seed=1),
        val_loader=val,
        max_steps=4,
        eval_interval=1,
        eval_iters=3,
        callbacks=[rec],
    )
    trainer.train()
    assert len(rec.evals) == 4 and all(v > 1.0 for v in rec.evals), rec.evals  # ln(61) ~ 4.1, never 0
