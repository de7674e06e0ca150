"""Attention that skips what it hides: the blocked window, sparse NSA and FlexAttention equal the dense
masked computation, outputs and gradients, over shapes that do not tile evenly."""

import pytest
import torch
from torch.nn import functional as F

from lmlab.attn.base import visible
from lmlab.attn.local import blocked_window_attention
from lmlab.errors import ConfigError
from lmlab.model.build import build_model
from lmlab.pos.base import PosContext
from lmlab.registry import ATTN
from tests.conftest import tiny_cfg

SHAPES = [  # B, n_head, n_kv_head, T, window
    (2, 4, 2, 37, 5),  # GQA, T not a multiple of the window
    (1, 2, 2, 16, 4),  # T a multiple
    (2, 4, 1, 9, 8),  # one block and a bit (T < 2w)
    (1, 3, 3, 50, 7),
]


def _grads(out: torch.Tensor, inputs) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out.square().sum(), inputs))


@pytest.mark.parametrize(("B", "H", "Hkv", "T", "w"), SHAPES)
@pytest.mark.parametrize("alibi", [False, True])
def test_blocked_window_equals_the_dense_band_mask(B, H, Hkv, T, w, alibi):
    torch.manual_seed(T)
    q = torch.randn(B, H, T, 8, requires_grad=True)
    k, v = (torch.randn(B, Hkv, T, 8, requires_grad=True) for _ in range(2))
    slopes = torch.rand(H) if alibi else None
    pos = torch.arange(T)
    mask = torch.zeros(T, T).masked_fill(~visible(pos, pos, w), float("-inf"))
    if alibi:
        mask = mask + slopes[:, None, None] * (pos[None, :] - pos[:, None]).float()
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=Hkv != H)
    blocked = blocked_window_attention(q, k, v, w, slopes=slopes)
    torch.testing.assert_close(blocked, dense, atol=1e-5, rtol=1e-5)
    for a, b in zip(_grads(blocked, (q, k, v)), _grads(dense, (q, k, v)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _twins(attn: str, backends: tuple[str, str], **cfg):
    torch.manual_seed(0)
    first = build_model(tiny_cfg("llama", attn=attn, attn_backend=backends[0], dropout=0.0, **cfg))
    second = build_model(tiny_cfg("llama", attn=attn, attn_backend=backends[1], dropout=0.0, **cfg))
    second.load_state_dict(first.state_dict())
    return first, second


@pytest.mark.parametrize("attn", ["sliding_window", "sdpa"])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_eager_blocked_backend_equals_one_dense_call_through_the_model(attn, pos):
    eager, dense = _twins(attn, ("eager", "sdpa"), pos=pos, window=6, n_kv_head=2, max_seq_len=64)
    x = torch.randint(0, 61, (2, 29))
    x[:, [4, 17]] = 0  # separators, for the document-masked pass
    for doc_sep in (None, 0):
        eager.zero_grad()
        dense.zero_grad()
        out_e, out_d = eager(x, targets=x, doc_sep=doc_sep), dense(x, targets=x, doc_sep=doc_sep)
        torch.testing.assert_close(out_e.logits, out_d.logits, atol=1e-5, rtol=1e-5)
        out_e.loss.backward()
        out_d.loss.backward()
        for (name, a), b in zip(eager.named_parameters(), dense.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=f"{name} doc_sep={doc_sep}")
    # Left-padded batches (generation) and cached decoding take the masked path in both: unchanged.
    prompts = eager.generate(x[:, :5], max_new_tokens=4, temperature=0.0)
    assert torch.equal(prompts, dense.generate(x[:, :5], max_new_tokens=4, temperature=0.0))


NSA_CASES = [  # T, n_kv_head, nsa options
    (37, 2, {}),
    (64, 4, {}),
    (100, 1, {"block_size": 8, "stride": 4, "select_block": 8, "n_select": 3, "window": 10}),
    (20, 2, {"window": 64}),
    (75, 2, {"n_select": 2, "selection": "block"}),  # a block shares its first query's choice
    (100, 1, {"block_size": 8, "stride": 4, "select_block": 8, "n_select": 3, "window": 10, "selection": "block"}),
]


@pytest.mark.parametrize(("T", "kvh", "nsa"), NSA_CASES)
def test_sparse_nsa_equals_its_dense_reference(T, kvh, nsa):
    cfg = tiny_cfg("llama", attn="native_sparse", n_kv_head=kvh, max_seq_len=128, nsa=nsa)
    torch.manual_seed(T)
    sparse, reference = ATTN.get("native_sparse")(cfg), ATTN.get("native_sparse_reference")(cfg)
    with torch.no_grad():
        for p in sparse.parameters():
            p.normal_(0, 0.1)
    reference.load_state_dict(sparse.state_dict())
    x = torch.randn(2, T, cfg.d_model, requires_grad=True)
    pos = PosContext(0, T, torch.device("cpu"))
    ys, yr = sparse(x, pos=pos), reference(x, pos=pos)
    torch.testing.assert_close(ys, yr, atol=1e-5, rtol=1e-5)
    gs = _grads(ys, [x, *sparse.parameters()])
    gr = _grads(yr, [x, *reference.parameters()])
    for a, b in zip(gs, gr, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_reference_is_registered_as_one():
    entry = ATTN.entry("native_sparse_reference")
    assert "reference" in entry.tags and ATTN.get("native_sparse_reference").sparse is False


def test_flex_cannot_train_on_cpu_and_says_what_can():
    model = build_model(tiny_cfg("llama", attn="sliding_window", window=4, attn_backend="flex", dropout=0.0))
    x = torch.randint(0, 61, (1, 12))
    with pytest.raises(ConfigError, match="model.attn_backend: flex cannot train on cpu .* allowed here: auto, eager"):
        model(x, targets=x)


@pytest.mark.slow
@pytest.mark.xdist_group("flex")  # one process: the compiled kernel is shared
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_flex_inference_on_cpu_equals_the_dense_mask(pos):
    """FlexAttention's block mask (window) and score modification (ALiBi), compiled once per process."""
    flex, dense = _twins("sliding_window", ("flex", "sdpa"), pos=pos, window=6, n_kv_head=2, max_seq_len=64)
    flex.eval()
    dense.eval()
    x = torch.randint(0, 61, (2, 29))
    x[:, [7, 18]] = 0  # token 0 as a document separator: per-batch block masks keep documents apart
    with torch.no_grad():
        torch.testing.assert_close(flex(x).logits, dense(x).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(flex(x, doc_sep=0).logits, dense(x, doc_sep=0).logits, atol=1e-5, rtol=1e-5)


def test_both_sparse_selection_paths_equal_the_reference(monkeypatch):
    """The union of a query block's choices (neighbours agree) and per-query gathers (they do not)."""
    from lmlab.attn.native_sparse import NativeSparseAttention

    cfg = tiny_cfg("llama", attn="native_sparse", n_kv_head=2, max_seq_len=128, nsa={"n_select": 2})
    torch.manual_seed(3)
    sparse, reference = ATTN.get("native_sparse")(cfg), ATTN.get("native_sparse_reference")(cfg)
    reference.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 75, cfg.d_model)
    pos = PosContext(0, 75, torch.device("cpu"))
    union = NativeSparseAttention._selection_union
    taken = []
    monkeypatch.setattr(
        NativeSparseAttention, "_selection_union", lambda s, *a: taken.append(union(s, *a)) or taken[-1]
    )
    expected = reference(x, pos=pos)
    torch.testing.assert_close(sparse(x, pos=pos), expected, atol=1e-5, rtol=1e-5)
    assert taken and taken[-1] is not None  # the union path ran
    monkeypatch.setattr(NativeSparseAttention, "_selection_union", lambda s, *a: None)
    torch.testing.assert_close(sparse(x, pos=pos), expected, atol=1e-5, rtol=1e-5)


def test_block_selection_reads_each_block_once_and_follows_its_first_query(monkeypatch):
    """selection="block": every query of a selection block has its first query's blocks, so the union path
    (one gather per query block) always runs."""
    from lmlab.attn.native_sparse import NativeSparseAttention

    cfg = tiny_cfg(
        "llama", attn="native_sparse", n_kv_head=2, max_seq_len=128, nsa={"n_select": 2, "selection": "block"}
    )
    torch.manual_seed(5)
    nsa = ATTN.get("native_sparse")(cfg)
    choose, union = NativeSparseAttention._choose, NativeSparseAttention._selection_union
    chosen, taken = [], []
    monkeypatch.setattr(NativeSparseAttention, "_choose", lambda s, *a: chosen.append(choose(s, *a)) or chosen[-1])
    monkeypatch.setattr(
        NativeSparseAttention, "_selection_union", lambda s, *a: taken.append(union(s, *a)) or taken[-1]
    )
    T, L = 70, cfg.nsa.select_block
    nsa(torch.randn(2, T, cfg.d_model), pos=PosContext(0, T, torch.device("cpu")))
    top, _ = chosen[-1]
    for t in range(T):
        assert torch.equal(top[:, :, t], top[:, :, t // L * L])
    assert taken and taken[-1] is not None
