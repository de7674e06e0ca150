"""Sliding window equals full attention with an explicit band mask; its cache holds only the window."""

import itertools

import pytest
import torch

from lmlab.attn.kv_cache import WindowKVCache
from lmlab.errors import ConfigError
from lmlab.model.build import build_model
from tests.conftest import tiny_cfg
from tests.helpers import twin_models


@pytest.mark.parametrize("attn", ["sliding_window", "sdpa", "mha"])
@pytest.mark.parametrize("pos", ["rope", "alibi", "learned"])
def test_window_equals_band_masked_full_attention(attn, pos):
    W, T = 5, 20
    cfg = tiny_cfg("llama", attn=attn, pos=pos, window=W, n_layer=1)
    model = build_model(cfg).eval()
    a = model.blocks[0].attn
    x = torch.randn(2, T, cfg.d_model)
    ctx = model.pos.context(T, 0, x.device)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    band = (j <= i) & (j > i - W)
    hs = cfg.head_dim
    q, k, v = a.qkv(x).split([cfg.n_head * hs, cfg.n_kv_head * hs, cfg.n_kv_head * hs], -1)
    q, k, v = (t.view(2, T, -1, hs).transpose(1, 2) for t in (q, k, v))
    q, k = ctx.rotate(q, k)
    scores = q @ k.transpose(-1, -2) / hs**0.5
    if pos == "alibi":
        scores = scores + ctx.slopes[:, None, None] * (j - i)
    ref = torch.softmax(scores.masked_fill(~band, float("-inf")), -1) @ v
    expected = a.proj(ref.transpose(1, 2).reshape(2, T, -1))
    torch.testing.assert_close(a(x, pos=ctx), expected, atol=1e-5, rtol=1e-5)


def test_window_cache_is_window_sized_and_exact():
    cfg = tiny_cfg("llama", attn="sliding_window", window=6, max_seq_len=40)
    model = build_model(cfg).eval()
    x = torch.randint(0, 61, (1, 30))
    cache = model.new_cache(1, 40)
    assert isinstance(cache[0], WindowKVCache)
    ring = cache[0].k.data_ptr()
    # Single tokens, then chunks shorter and longer than the window, across several wraps.
    cuts = [0, 4, *range(5, 17), 19, 27, 28, 29, 30]
    with torch.no_grad():
        parts = [model(x[:, a:b], cache=cache).logits for a, b in itertools.pairwise(cuts)]
    torch.testing.assert_close(torch.cat(parts, 1), model(x).logits, atol=1e-5, rtol=1e-5)
    assert cache[0].k.shape == (1, cfg.n_kv_head, 6, cfg.head_dim) and cache[0].length == 30
    assert cache[0].k.data_ptr() == ring  # written in place: a ring, not a growing buffer
    assert sorted(cache[0].slot_pos.tolist()) == list(range(24, 30))


def test_window_at_least_sequence_equals_dense():
    a, b = twin_models(tiny_cfg("llama"), attn="sliding_window", window=64)
    x = torch.randint(0, 61, (2, 20))
    torch.testing.assert_close(a(x).logits, b(x).logits)


def test_sliding_window_requires_window():
    with pytest.raises(ConfigError, match="model.window: required by attention 'sliding_window'"):
        tiny_cfg("llama", attn="sliding_window")
