"""Every reference layer and the whole model against central finite differences (float64)."""

import sys

import numpy as np
import pytest

from lmlab.reference.nn.attention import MultiHeadAttention
from lmlab.reference.nn.layers import GELU, Embedding, LayerNorm, Linear, softmax
from lmlab.reference.nn.losses import cross_entropy_masked
from lmlab.reference.nn.transformer import FeedForward, Seq2Seq, Seq2SeqConfig
from lmlab.reference.utils.mask import causal_mask, decoder_mask, pad_mask
from lmlab.text.pairs import make_batch

RNG = np.random.default_rng(0)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| relative to the larger magnitude (floored at 1e-4: a key bias gets exactly zero gradient)."""
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-4))


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of scalar f() with respect to every entry of x (perturbed in place)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


def check_module(module, forward, inputs: list[np.ndarray], backward):
    """Gradients of sum(forward() * w) for fixed random w, against finite differences, for params and inputs."""
    module.astype(np.float64)
    out = forward()
    w = RNG.standard_normal(out.shape)
    loss = lambda: float((forward() * w).sum())  # noqa: E731
    module.zero_grad()
    forward()
    d_inputs = backward(w)
    for name, p in module.parameters().items():
        assert rel_err(numeric_grad(loss, p), module.gradients()[name]) < 1e-4, name
    for x, dx in zip(inputs, d_inputs, strict=True):
        assert rel_err(numeric_grad(loss, x), dx) < 1e-4


def test_linear_gelu_layernorm_ffn_gradients():
    x = RNG.standard_normal((2, 3, 5))
    lin = Linear(5, 4, RNG, std=0.5)
    check_module(lin, lambda: lin.forward(x), [x], lambda w: [lin.backward(w)])
    act = GELU()
    check_module(act, lambda: act.forward(x), [x], lambda w: [act.backward(w)])
    ln = LayerNorm(5)
    ln.params["weight"][...] = RNG.standard_normal(5)
    ln.params["bias"][...] = RNG.standard_normal(5)
    check_module(ln, lambda: ln.forward(x), [x], lambda w: [ln.backward(w)])
    ffn = FeedForward(5, 7, RNG)
    for p in ffn.parameters().values():
        p[...] = RNG.standard_normal(p.shape) * 0.5
    check_module(ffn, lambda: ffn.forward(x), [x], lambda w: [ffn.backward(w)])


def test_embedding_scatter_adds_repeated_rows():
    emb = Embedding(6, 3, RNG)
    ids = np.array([[1, 4, 1], [1, 0, 5]])
    check_module(emb, lambda: emb.forward(ids), [], lambda w: emb.backward(w) or [])
    emb.zero_grad()
    emb.forward(ids)
    emb.backward(np.ones((2, 3, 3)))
    assert emb.grads["weight"][1].tolist() == [3.0, 3.0, 3.0] and emb.grads["weight"][2].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("cross", [False, True])
def test_attention_gradients_with_masks(cross):
    attn = MultiHeadAttention(8, 2, RNG)
    for p in attn.parameters().values():
        p[...] = RNG.standard_normal(p.shape) * 0.4
    xq = RNG.standard_normal((2, 4, 8))
    xkv = RNG.standard_normal((2, 3, 8)) if cross else xq
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)[:, : xkv.shape[1]]
    blocked = pad_mask(valid) if cross else decoder_mask(valid)
    if cross:
        check_module(attn, lambda: attn.forward(xq, xkv, blocked), [xq, xkv], lambda w: list(attn.backward(w)))
    else:
        check_module(attn, lambda: attn.forward(xq, xq, blocked), [xq], lambda w: [sum(attn.backward(w))])
    B, h, Tq, Tk = attn.attn.shape
    assert (B, h, Tq, Tk) == (2, 2, 4, xkv.shape[1])
    np.testing.assert_allclose(attn.attn.sum(-1), 1.0, atol=1e-12)  # every query sees at least one key
    assert np.all(attn.attn[np.broadcast_to(blocked, attn.attn.shape)] == 0.0)


def test_masks():
    c = causal_mask(4)
    assert c.tolist() == np.triu(np.ones((4, 4), bool), 1).tolist() and not c.diagonal().any()
    p = pad_mask(np.array([[True, True, False]]))
    assert p.shape == (1, 1, 1, 3) and p[0, 0, 0].tolist() == [False, False, True]


def test_softmax_is_stable():
    y = softmax(np.array([[1000.0, 1001.0, -1000.0]]))
    np.testing.assert_allclose(y, [[1 / (1 + np.e), np.e / (1 + np.e), 0.0]], rtol=1e-12)


def test_cross_entropy_matches_manual_computation():
    logits = RNG.standard_normal((2, 3, 5))
    targets = np.array([[1, 4, 0], [2, 0, 0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    loss, d = cross_entropy_masked(logits, targets, mask)
    manual = []
    for b, t in [(0, 0), (0, 1), (1, 0)]:
        z = logits[b, t]
        manual.append(np.log(np.exp(z).sum()) - z[targets[b, t]])
    assert loss == pytest.approx(np.mean(manual), rel=1e-12)
    f = lambda: cross_entropy_masked(logits, targets, mask)[0]  # noqa: E731
    assert rel_err(numeric_grad(f, logits), d) < 1e-6
    assert np.all(d[~mask] == 0)


def _model(seed=1):
    m = Seq2Seq(Seq2SeqConfig(src_vocab=11, tgt_vocab=13, d_model=8, n_head=2, n_layer=2, d_ff=12, seed=seed))
    m.astype(np.float64)
    rng = np.random.default_rng(seed)
    for p in m.parameters().values():
        p[...] = rng.standard_normal(p.shape) * 0.5  # larger than the init, so every path carries gradient
    return m


def test_whole_model_gradients_match_finite_differences():
    m = _model()
    b = make_batch([([4, 5, 6, 2], [7, 8]), ([9, 2], [10, 11, 12])])

    def loss():
        return cross_entropy_masked(m.forward(b["X_ids"], b["M_src"], b["Y_in"], b["M_tgt"]), b["Y_out"], b["M_tgt"])

    m.zero_grad()
    _value, d = loss()
    m.backward(d)
    grads = {k: g.copy() for k, g in m.gradients().items()}
    for name, p in m.parameters().items():
        assert rel_err(numeric_grad(lambda: loss()[0], p), grads[name]) < 1e-4, name


def test_greedy_decode_returns_valid_ids_ending_in_eos():
    m = _model(2)
    b = make_batch([([4, 5, 2], []), ([6, 2], [])])
    out = m.greedy_decode(b["X_ids"], b["M_src"], max_len=30)
    assert len(out) == 2
    for ids in out:
        assert all(0 <= i < 13 for i in ids) and 1 <= len(ids) <= 30
        assert ids[-1] == 2 or len(ids) == 30
        assert 0 not in ids and 1 not in ids


def test_reference_does_not_import_torch():
    import subprocess

    code = "import lmlab.reference.cli, lmlab.reference.train.loop, sys; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
