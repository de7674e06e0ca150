import torch
from torch.nn import functional as F

from lmlab.norm.layernorm import LayerNorm, LayerNormNoBias
from lmlab.norm.rmsnorm import RMSNorm
from tests.conftest import tiny_cfg


def test_rmsnorm_formula():
    cfg = tiny_cfg("llama", norm_eps=1e-6)
    norm = RMSNorm(cfg)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(cfg.d_model))
    x = torch.randn(2, 5, cfg.d_model) * 3 + 1
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_rmsnorm_computes_in_float32_for_half_inputs():
    norm = RMSNorm(tiny_cfg("llama"))
    x = torch.randn(4, 32) * 300
    out = norm(x.to(torch.bfloat16))
    torch.testing.assert_close(out.float(), norm(x), atol=0.05, rtol=0.02)


def test_layernorm_variants():
    cfg = tiny_cfg("gpt2")
    ln, ln_nb = LayerNorm(cfg), LayerNormNoBias(cfg)
    assert ln.bias is not None and ln_nb.bias is None
    x = torch.randn(3, cfg.d_model)
    torch.testing.assert_close(ln_nb(x), F.layer_norm(x, (cfg.d_model,), eps=cfg.norm_eps))
    out = ln(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)
