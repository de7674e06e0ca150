"""mha (explicit) and sdpa (fused) against each other and an independent per-head reference."""

import math

import pytest
import torch

from lmlab.registry import POS
from tests.conftest import tiny_cfg
from tests.helpers import twin_models

POSITIONS = POS.names()
KV_HEADS = [4, 2, 1]  # MHA, GQA, MQA with n_head=4


def reference_attention(x, attn, cos=None, sin=None):
    """Per-head loop: softmax(q k^T / sqrt(d)) v with a lower-triangular mask, written independently."""
    from lmlab.pos.base import apply_rotary

    T = x.shape[1]
    H, KV, hs = attn.n_head, attn.n_kv_head, attn.head_dim
    qkv = x @ attn.qkv.weight.T + (attn.qkv.bias if attn.qkv.bias is not None else 0)
    q, k, v = qkv.split([H * hs, KV * hs, KV * hs], dim=-1)
    outs = []
    for h in range(H):
        g = h // (H // KV)  # query head h reads key/value head g
        qh, kh, vh = q[..., h * hs : (h + 1) * hs], k[..., g * hs : (g + 1) * hs], v[..., g * hs : (g + 1) * hs]
        if cos is not None:
            qh, kh = apply_rotary(qh, cos, sin), apply_rotary(kh, cos, sin)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(hs)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        outs.append(torch.softmax(scores, -1) @ vh)
    return torch.cat(outs, -1) @ attn.proj.weight.T + (attn.proj.bias if attn.proj.bias is not None else 0)


@pytest.mark.parametrize("attn_name", ["mha", "sdpa"])
@pytest.mark.parametrize("kv", KV_HEADS)
@pytest.mark.parametrize("bias", [True, False])
def test_attention_matches_reference(attn_name, kv, bias):
    from lmlab.model.build import build_model

    cfg = tiny_cfg("llama", attn=attn_name, n_kv_head=kv, bias=bias)
    model = build_model(cfg)
    attn = model.blocks[0].attn
    x = torch.randn(2, 10, cfg.d_model)
    ctx = model.pos.context(10, 0, x.device)
    torch.testing.assert_close(attn(x, pos=ctx), reference_attention(x, attn, ctx.cos, ctx.sin), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("kv", KV_HEADS)
def test_mha_and_sdpa_agree_on_outputs_and_gradients(pos, kv):
    cfg = tiny_cfg("gpt2", pos=pos, n_kv_head=kv, attn="mha")
    a, b = twin_models(cfg, attn="sdpa")
    x = torch.randint(0, cfg.vocab_size, (3, 20))
    out_a, out_b = a(x, targets=x.roll(-1, 1)), b(x, targets=x.roll(-1, 1))
    torch.testing.assert_close(out_a.logits, out_b.logits, atol=1e-5, rtol=1e-5)
    out_a.loss.backward()
    out_b.loss.backward()
    grads_b = dict(b.named_parameters())
    for name, p in a.named_parameters():
        torch.testing.assert_close(p.grad, grads_b[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_gqa_equals_mha_with_repeated_kv_heads():
    """n_kv_head=2 equals full MHA whose k/v weights repeat each group's head."""
    from lmlab.model.build import build_model

    gqa_cfg = tiny_cfg("llama", n_kv_head=2, n_layer=1)
    gqa = build_model(gqa_cfg)
    mha = build_model(gqa_cfg.model_copy(update={"n_kv_head": 4}))
    sd = gqa.state_dict()
    hs, d = gqa_cfg.head_dim, gqa_cfg.d_model
    w = sd["blocks.0.attn.qkv.weight"]
    q, k, v = w.split([4 * hs, 2 * hs, 2 * hs])
    rep = lambda t: t.view(2, hs, d).repeat_interleave(2, dim=0).reshape(4 * hs, d)  # noqa: E731
    sd["blocks.0.attn.qkv.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    x = torch.randint(0, gqa_cfg.vocab_size, (2, 12))
    torch.testing.assert_close(gqa(x).logits, mha(x).logits, atol=1e-5, rtol=1e-5)
