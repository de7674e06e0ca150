"""Each registered optimizer against a reference computation, its parameter groups, and exact resume."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lmlab.config import TrainConfig
from lmlab.data.datasets import RandomWindowLoader
from lmlab.errors import ConfigError
from lmlab.model.build import build_model
from lmlab.optim import build_optimizer
from lmlab.optim.groups import hidden_matrices
from lmlab.optim.muon import NS_COEFFS, newton_schulz
from lmlab.registry import OPTIM
from lmlab.trainer.mini_trainer import MiniTrainer
from lmlab.trainer.schedules import warmup_cosine_scheduler
from tests.conftest import tiny_cfg


def _model(**kw):
    torch.manual_seed(0)
    return build_model(tiny_cfg("llama", n_layer=1, d_model=16, n_head=2, vocab_size=23, tie_weights=False, **kw))


def _fake_grads(model, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def _run(optimizer, model, steps=3):
    for step in range(steps):
        _fake_grads(model, step)
        optimizer.step()


def _names(model, params):
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_every_optimizer_is_registered_with_its_paper():
    assert OPTIM.names() == ["adafactor", "adamw", "lion", "muon", "sgd"]
    assert all(e.paper for e in OPTIM.entries())


def test_adamw_equals_torch_with_decay_on_matrices_only_and_embeddings_exempt_when_asked():
    model, twin = _model(), _model()
    opt = build_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1, beta1=0.8, beta2=0.9, decay_embeddings=False))
    decaying = _names(model, opt.param_groups[0]["params"])
    assert "tok_emb.weight" not in decaying and "lm_head.weight" in decaying
    assert all(model.get_parameter(n).dim() >= 2 for n in decaying)
    by_name = dict(twin.named_parameters())
    ref = torch.optim.AdamW(
        [{"params": [by_name[n] for n in _names(model, g["params"])], "weight_decay": g["weight_decay"]}
         for g in opt.param_groups],
        lr=1e-2, betas=(0.8, 0.9),
    )  # fmt: skip
    _run(opt, model)
    _run(ref, twin)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_follows_the_momentum_recursion_by_hand(nesterov):
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(optim="sgd", lr=0.1, weight_decay=0.0, sgd={"nesterov": nesterov}))
    _run(opt, model)
    for name, p in model.named_parameters():
        x, buf = start[name], None
        for step in range(3):
            gen = torch.Generator().manual_seed(100 + step)
            grads = {n: torch.randn(q.shape, generator=gen) for n, q in model.named_parameters()}
            g = grads[name]
            buf = g.clone() if buf is None else 0.9 * buf + g
            x = x - 0.1 * (g + 0.9 * buf if nesterov else buf)
        torch.testing.assert_close(p.detach(), x, msg=name)


def test_adafactor_is_torchs_with_the_options_passed_through():
    model, twin = _model(), _model()
    cfg = TrainConfig(optim="adafactor", lr=1e-2, weight_decay=0.0, adafactor={"beta2_decay": -0.7, "eps": 1e-2})
    opt = build_optimizer(model, cfg)
    ref = torch.optim.Adafactor(twin.parameters(), lr=1e-2, beta2_decay=-0.7, eps=(None, 1e-2))
    _run(opt, model)
    _run(ref, twin)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_lion_steps_by_the_sign_of_the_interpolated_momentum():
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(optim="lion", lr=1e-3, weight_decay=0.5, lion={"beta1": 0.8, "beta2": 0.95})
    opt = build_optimizer(model, cfg)
    decaying = set(_names(model, opt.param_groups[0]["params"]))
    _run(opt, model)
    for name, p in model.named_parameters():
        x, m, wd = start[name].double(), torch.zeros_like(start[name]).double(), 0.5 if name in decaying else 0.0
        for step in range(3):
            gen = torch.Generator().manual_seed(100 + step)
            g = {n: torch.randn(q.shape, generator=gen) for n, q in model.named_parameters()}[name].double()
            update = torch.sign(0.8 * m + 0.2 * g)
            x = x * (1 - 1e-3 * wd) - 1e-3 * update
            m = 0.95 * m + 0.05 * g
        torch.testing.assert_close(p.detach().double(), x, rtol=0, atol=1e-6, msg=name)


def test_newton_schulz_approximates_the_polar_factor():
    gen = torch.Generator().manual_seed(0)
    for shape in [(24, 16), (16, 40), (3, 8, 8)]:
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        out = newton_schulz(g, steps=5)
        sv = torch.linalg.svdvals(out)
        assert sv.min() > 0.6 and sv.max() < 1.25, (shape, sv)  # the quintic's band, not exactly 1
        # Same singular vectors: projected onto U V^T, what remains is the small band error.
        cos = (out * (u @ vh)).sum((-2, -1)) / (out.norm(dim=(-2, -1)) * (u @ vh).norm(dim=(-2, -1)))
        assert (cos > 0.97).all(), (shape, cos)


def _ns_by_hand(g: np.ndarray, steps: int) -> np.ndarray:
    a, b, c = NS_COEFFS
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_muon_orthogonalises_the_blocks_matrices_and_steps_the_rest_with_adamw():
    model, twin = _model(), _model()
    start = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
    cfg = TrainConfig(optim="muon", lr=1e-2, weight_decay=0.1, beta1=0.8, beta2=0.9, muon={"lr": 0.05})
    opt = build_optimizer(model, cfg)
    muon_names = _names(model, hidden_matrices(model))
    assert muon_names and all(n.startswith("blocks.") for n in muon_names)
    assert "tok_emb.weight" not in muon_names and "lm_head.weight" not in muon_names
    assert all(model.get_parameter(n).dim() == 2 for n in muon_names)
    by_name = dict(twin.named_parameters())
    ref = torch.optim.AdamW(
        [{"params": [by_name[n] for n in _names(model, g["params"])], "weight_decay": g["weight_decay"]}
         for g in opt.param_groups[1:]],
        lr=1e-2, betas=(0.8, 0.9),
    )  # fmt: skip
    _run(opt, model)
    _run(ref, twin)
    for name, p in model.named_parameters():
        if name not in muon_names:  # the AdamW part, against torch's
            torch.testing.assert_close(p, by_name[name], msg=name)
            continue
        x, buf = start[name], np.zeros_like(start[name])
        for step in range(3):
            gen = torch.Generator().manual_seed(100 + step)
            g = {n: torch.randn(q.shape, generator=gen) for n, q in model.named_parameters()}[name].double().numpy()
            buf = 0.95 * buf + g
            update = _ns_by_hand(g + 0.95 * buf, 5)
            x = x - 0.05 * math.sqrt(max(1.0, x.shape[0] / x.shape[1])) * update
        np.testing.assert_allclose(p.detach().double().numpy(), x, rtol=0, atol=2e-5, err_msg=name)


def test_muon_refuses_sharded_data_parallelism_in_one_line(monkeypatch):
    model = _model()
    opt = build_optimizer(model, TrainConfig(optim="muon"))
    monkeypatch.setattr("lmlab.trainer.distributed.resolve_strategy", lambda mode: "fsdp")
    with pytest.raises(ConfigError, match=r"train.distributed: fsdp .* MuonOptimizer .*allowed: ddp, none"):
        MiniTrainer(model, opt, train_loader=[], max_steps=1, device="cpu", precision="fp32")


def _tokens(seed):
    return np.random.default_rng(seed).integers(0, 23, 2000).astype(np.uint16)


def _trainer(tmp_path, optim, max_steps, resume=None):
    model = _model(dropout=0.1)
    opt = build_optimizer(model, TrainConfig(optim=optim, lr=3e-3))
    return MiniTrainer(
        model,
        opt,
        train_loader=RandomWindowLoader(_tokens(0), 4, 16, seed=1),
        val_loader=RandomWindowLoader(_tokens(1), 4, 16, seed=2),
        max_steps=max_steps,
        device="cpu",
        precision="fp32",
        scheduler=warmup_cosine_scheduler(opt, warmup=2, decay_steps=6, min_ratio=0.1),
        ckpt_dir=tmp_path,
        eval_interval=3,
        eval_iters=1,
        resume=resume,
    )


@pytest.mark.parametrize("optim", ["sgd", "adafactor", "lion", "muon"])
def test_each_optimizer_resumes_bit_for_bit(tmp_path, optim):
    full = _trainer(tmp_path / "full", optim, 6)
    full.train()
    _trainer(tmp_path / "split", optim, 3).train()
    resumed = _trainer(tmp_path / "split", optim, 6, resume="auto")
    resumed.train()
    assert resumed.start_step == 3
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert isinstance(resumed.optimizer, type(full.optimizer))
    assert nn.utils.parameters_to_vector(resumed.model.parameters()).isfinite().all()


def test_bad_optimizer_settings_name_the_field_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"train.optim: unknown optimizer 'adam'; known: adafactor, adamw, lion"):
        TrainConfig(optim="adam")
    with pytest.raises(ConfigError, match=r"train.sgd.nesterov: needs momentum > 0"):
        TrainConfig(optim="sgd", sgd={"nesterov": True, "momentum": 0.0})
    with pytest.raises(ConfigError, match=r"train.muon"):
        TrainConfig(muon={"ns_step": 3})


def test_the_flags_and_the_saved_config_carry_each_optimizers_settings():
    from lmlab.cli.schema_flags import schema_options

    flags = {o for opt in schema_options(("train",)) for o in opt.opts}
    assert {"--optim", "--train.optim", "--train.muon.lr", "--train.lion.beta2", "--train.sgd.nesterov"} <= flags
    cfg = TrainConfig(optim="lion", lion={"beta2": 0.98})
    dumped = cfg.model_dump(mode="json")
    assert dumped["optim"] == "lion" and dumped["lion"]["beta2"] == 0.98 and dumped["muon"]["lr"] == 0.02
    assert TrainConfig(**dumped).lion.beta2 == 0.98
