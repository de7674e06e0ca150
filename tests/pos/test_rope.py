"""RoPE against the complex-number form of RoFormer and its relative-position property."""

import torch

from lmlab.pos.rope import RotaryPositions
from tests.conftest import tiny_cfg


def complex_rope(x, positions, theta, rot):
    """Pairs (i, i + rot/2) as complex numbers multiplied by exp(j * pos * theta^(-2i/rot))."""
    half = rot // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / rot)
    angles = positions[:, None].double() * freqs[None]  # (T, half)
    z = torch.complex(x[..., :half].double(), x[..., half:rot].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag, x[..., rot:].double()], -1).float()


def test_rope_matches_complex_formulation():
    cfg = tiny_cfg("llama", rope={"theta": 500.0})
    rope = RotaryPositions(cfg)
    q = torch.randn(2, 4, 9, cfg.head_dim)
    ctx = rope.context(9, 3, q.device)
    q_rot, _ = ctx.rotate(q, q)
    expected = complex_rope(q, torch.arange(3, 12), 500.0, cfg.head_dim)
    torch.testing.assert_close(q_rot, expected, atol=1e-5, rtol=1e-5)


def test_partial_rotary_leaves_tail_untouched():
    cfg = tiny_cfg("llama", d_model=64, rope={"fraction": 0.5})
    rope = RotaryPositions(cfg)
    assert rope.rot_dim == cfg.head_dim // 2
    q = torch.randn(1, 4, 5, cfg.head_dim)
    q_rot, _ = rope.context(5, 0, q.device).rotate(q, q)
    torch.testing.assert_close(q_rot[..., rope.rot_dim :], q[..., rope.rot_dim :])
    torch.testing.assert_close(q_rot, complex_rope(q, torch.arange(5), 10000.0, rope.rot_dim), atol=1e-5, rtol=1e-5)


def test_scores_depend_only_on_relative_position():
    cfg = tiny_cfg("llama")
    rope = RotaryPositions(cfg)
    q, k = torch.randn(cfg.head_dim), torch.randn(cfg.head_dim)
    ctx = rope.context(40, 0, q.device)

    def score(m, n):
        qm, _ = rope.context(1, m, q.device).rotate(q.view(1, 1, 1, -1), q.view(1, 1, 1, -1))
        kn, _ = rope.context(1, n, q.device).rotate(k.view(1, 1, 1, -1), k.view(1, 1, 1, -1))
        return (qm * kn).sum()

    assert ctx.cos.shape == (40, cfg.head_dim)
    torch.testing.assert_close(score(7, 3), score(30, 26), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 5))


def test_rope_extends_past_max_seq_len():
    cfg = tiny_cfg("llama", max_seq_len=8)
    rope = RotaryPositions(cfg)
    ctx = rope.context(4, 20, torch.device("cpu"))
    assert ctx.cos.shape[0] == 4
    torch.testing.assert_close(ctx.cos[0, 0], torch.tensor(20.0).cos())
