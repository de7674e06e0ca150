import math

import pytest
import torch
from torch.nn import functional as F

from lmlab.errors import ConfigError
from lmlab.ffn.moe import MoE
from lmlab.model.build import build_model
from lmlab.registry import FFN
from tests.conftest import tiny_cfg


def test_one_expert_top1_equals_its_expert():
    cfg = tiny_cfg("llama", ffn="moe", moe={"n_experts": 1, "top_k": 1, "expert": "swiglu"})
    moe = MoE(cfg)
    x = torch.randn(2, 7, cfg.d_model)
    torch.testing.assert_close(moe(x), moe.experts[0](x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_matches_per_token_reference_and_routes_every_token(score):
    torch.manual_seed(0)
    cfg = tiny_cfg("llama", ffn="moe", moe={"n_experts": 4, "top_k": 2, "n_shared": 1, "score": score, "d_expert": 16})
    moe = MoE(cfg).train()
    x = torch.randn(3, 5, cfg.d_model)
    out = moe(x)
    flat = x.reshape(-1, cfg.d_model)
    logits = flat @ moe.router.weight.T
    s = F.softmax(logits, -1) if score == "softmax" else torch.sigmoid(logits)
    w, idx = s.topk(2, -1)
    w = w / w.sum(-1, keepdim=True)
    ref = torch.stack(
        [
            sum(w[n, j] * moe.experts[idx[n, j]](flat[n : n + 1])[0] for j in range(2)) + moe.shared(flat[n : n + 1])[0]
            for n in range(flat.shape[0])
        ]
    )
    torch.testing.assert_close(out.reshape(-1, cfg.d_model), ref, atol=1e-5, rtol=1e-5)
    assert moe.tokens_per_expert.sum() == 15 * 2  # dropless: every (token, choice) is processed
    assert moe.shared.gate.out_features == 16  # one shared expert of width d_expert


def test_aux_losses():
    torch.manual_seed(0)
    cfg = tiny_cfg("llama", ffn="moe", moe={"n_experts": 4, "top_k": 1, "aux_loss_weight": 1.0, "z_loss_weight": 0.0})
    moe = MoE(cfg).train()
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform probabilities; top-1 ties go to expert 0
    moe(torch.randn(2, 8, cfg.d_model))
    # f_0 = 4 (all tokens), P_i = 1/4: balance = 4 * 1/4 = 1 ... every token on one expert
    assert moe.aux_loss.item() == pytest.approx(1.0)
    moe.aux_weight, moe.z_weight = 0.0, 1.0
    moe(torch.randn(2, 8, cfg.d_model))
    assert moe.aux_loss.item() == pytest.approx(math.log(4) ** 2, rel=1e-5)
    moe.eval()
    moe(torch.randn(2, 8, cfg.d_model))
    assert moe.aux_loss is None


def test_model_adds_aux_loss_and_exposes_router_stats():
    cfg = tiny_cfg("llama", ffn="moe", moe={"n_experts": 4, "top_k": 2})
    model = build_model(cfg).train()
    x = torch.randint(0, 61, (2, 10))
    out = model(x, targets=x)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    (out.loss + out.aux_loss).backward()
    assert model.blocks[0].ffn.router.weight.grad.abs().sum() > 0
    stats = model.router_stats()
    assert list(stats) == ["layer0", "layer1"] and sum(stats["layer0"]) == 40


def test_bad_moe_settings_are_refused():
    with pytest.raises(ConfigError, match="model.moe.top_k: 5 exceeds n_experts=4"):
        tiny_cfg("llama", ffn="moe", moe={"n_experts": 4, "top_k": 5})
    with pytest.raises(ConfigError, match="model.moe.expert: unknown expert FFN 'moe'"):
        tiny_cfg("llama", ffn="moe", moe={"expert": "moe"})
    assert "moe" in FFN.names()
