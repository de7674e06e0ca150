import math

import torch

from lmlab.model.build import build_model
from lmlab.pos.alibi import alibi_slopes
from lmlab.pos.sinusoidal import SinusoidalPositions
from tests.conftest import tiny_cfg


def test_alibi_slopes_follow_the_paper():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # Non-power of two: the 4-head slopes, then every other slope of the 8-head sequence.
    four = [2.0 ** (-2 * (i + 1)) for i in range(4)]
    assert torch.allclose(alibi_slopes(6), torch.tensor([*four, 2.0**-1, 2.0**-3]))


def test_alibi_attention_equals_explicit_bias_reference():
    cfg = tiny_cfg("gpt2", pos="alibi", attn="mha", n_layer=1)
    torch.manual_seed(0)
    model = build_model(cfg)
    a = model.blocks[0].attn
    T, hs = 9, cfg.head_dim
    x = torch.randn(1, T, cfg.d_model)
    q, k, v = (t.view(1, T, cfg.n_head, hs).transpose(1, 2) for t in a.qkv(x).split(cfg.d_model, -1))
    slopes = alibi_slopes(cfg.n_head)
    bias = torch.tensor([[-(i - j) if j <= i else -math.inf for j in range(T)] for i in range(T)])
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs) + slopes[:, None, None] * bias
    expected = a.proj((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(1, T, -1))
    for attn in ("mha", "sdpa"):
        m = build_model(cfg.model_copy(update={"attn": attn}))
        m.load_state_dict(model.state_dict())
        torch.testing.assert_close(
            m.blocks[0].attn(x, pos=m.pos.context(T, 0, x.device)), expected, atol=1e-5, rtol=1e-5
        )


def test_sinusoidal_formula():
    cfg = tiny_cfg("gpt2", pos="sinusoidal")
    pe = SinusoidalPositions(cfg).embed(torch.zeros(1, 50, cfg.d_model), 0)[0]
    d = cfg.d_model
    for p in (0, 7, 49):
        for i in (0, 3, d // 2 - 1):
            assert math.isclose(pe[p, 2 * i].item(), math.sin(p / 10000 ** (2 * i / d)), abs_tol=1e-6)
            assert math.isclose(pe[p, 2 * i + 1].item(), math.cos(p / 10000 ** (2 * i / d)), abs_tol=1e-6)
    assert sum(p.numel() for p in SinusoidalPositions(cfg).parameters()) == 0
