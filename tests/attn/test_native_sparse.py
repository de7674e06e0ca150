"""NSA: the selection branch with every block selected is full causal attention; causality; gates."""

import pytest
import torch
from torch.nn import functional as F

from lmlab.attn.native_sparse import NativeSparseAttention
from lmlab.errors import ConfigError
from lmlab.model.build import build_model
from lmlab.model.generate import generate
from lmlab.pos.rope import RotaryPositions
from tests.conftest import tiny_cfg


def _nsa(**nsa):
    cfg = tiny_cfg("llama", attn="nsa", n_kv_head=2, max_seq_len=64, nsa=nsa)
    torch.manual_seed(0)
    return cfg, NativeSparseAttention(cfg), RotaryPositions(cfg)


def test_every_block_selected_equals_full_causal_attention():
    T = 40
    cfg, nsa, rope = _nsa(block_size=4, stride=4, select_block=4, n_select=10, window=T)
    x = torch.randn(2, T, cfg.d_model)
    pos = rope.context(T, 0, x.device)
    out = nsa.branches(x, pos=pos)
    hs, kvh = cfg.head_dim, cfg.n_kv_head
    q = nsa.q(x).view(2, T, cfg.n_head, hs).transpose(1, 2)
    parts = nsa.kv(x).view(2, T, 6, kvh, hs).transpose(1, 3).unbind(2)
    q, k_slc, k_win = pos.rotate(q, parts[2], parts[4])
    for k, v, name in ((k_slc, parts[3], "slc"), (k_win, parts[5], "win")):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        torch.testing.assert_close(out[name], ref, atol=1e-5, rtol=1e-5, msg=name)


def test_selection_is_sparse_when_fewer_blocks_are_selected():
    T = 40
    cfg, nsa, rope = _nsa(block_size=4, stride=4, select_block=4, n_select=2, window=4)
    x = torch.randn(1, T, cfg.d_model)
    pos = rope.context(T, 0, x.device)
    out = nsa.branches(x, pos=pos)
    q = nsa.q(x).view(1, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
    parts = nsa.kv(x).view(1, T, 6, cfg.n_kv_head, cfg.head_dim).transpose(1, 3).unbind(2)
    q, k_slc = pos.rotate(q, parts[2])
    dense = F.scaled_dot_product_attention(q, k_slc, parts[3], is_causal=True, enable_gqa=True)
    assert not torch.allclose(out["slc"][..., 20:, :], dense[..., 20:, :], atol=1e-4)
    # The first 8 queries only have the first and their own block: selection covers everything they see.
    torch.testing.assert_close(out["slc"][..., :8, :], dense[..., :8, :], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("selection", ["query", "block"])
def test_output_never_depends_on_later_tokens(selection):
    nsa = {"block_size": 4, "stride": 2, "select_block": 4, "n_select": 2, "window": 6, "selection": selection}
    cfg = tiny_cfg("llama", attn="nsa", n_kv_head=2, max_seq_len=64, nsa=nsa)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randint(0, 61, (2, 48))
    base = model(x).logits
    for t in (5, 17, 30, 47):
        y = x.clone()
        y[:, t:] = torch.randint(0, 61, (2, 48 - t))
        torch.testing.assert_close(model(y).logits[:, :t], base[:, :t], atol=1e-6, rtol=1e-6)


def test_gates_mix_branches():
    T = 20
    cfg, nsa, rope = _nsa(block_size=4, stride=2, select_block=4, n_select=2, window=6)
    x = torch.randn(1, T, cfg.d_model)
    pos = rope.context(T, 0, x.device)
    with torch.no_grad():
        nsa.gate.weight.zero_()
        nsa.gate.bias.copy_(torch.tensor([20.0, -20.0, -20.0] * cfg.n_head))  # only the compressed branch
    y = nsa(x, pos=pos)
    cmp = nsa.branches(x, pos=pos)["cmp"]
    expected = nsa.proj(cmp.transpose(1, 2).reshape(1, T, -1))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(cmp[:, :, :3]) == 0  # no compressed block has ended before position 3


def test_bad_block_geometry_is_refused():
    with pytest.raises(ConfigError, match="model.nsa.select_block"):
        tiny_cfg("llama", attn="nsa", nsa={"stride": 4, "select_block": 6})
    with pytest.raises(ConfigError, match="does not support pos='alibi'"):
        tiny_cfg("llama", attn="nsa", pos="alibi")


def test_block_selection_decodes_with_a_cache_as_the_whole_sequence_does():
    """The running block's choice is carried in the cache from its first query to the rest."""
    nsa = {"block_size": 4, "stride": 2, "select_block": 4, "n_select": 2, "window": 6, "selection": "block"}
    torch.manual_seed(1)
    model = build_model(tiny_cfg("llama", attn="nsa", n_kv_head=2, max_seq_len=64, nsa=nsa)).eval()
    prompt = torch.randint(0, 61, (2, 7))  # the prompt ends inside a selection block
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "seed": 2}):
        cached = generate(model, prompt, 40, use_cache=True, **kwargs)
        assert torch.equal(cached, generate(model, prompt, 40, use_cache=False, **kwargs))
    x = torch.randint(0, 61, (1, 45))
    full = model(x).logits
    cache = model.new_cache(1, 64)
    steps = [model(x[:, a:b], cache=cache).logits for a, b in ((0, 6), (6, 7), (7, 13), (13, 45))]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
