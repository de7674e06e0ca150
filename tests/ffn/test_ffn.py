import math

import pytest
import torch
from torch.nn import functional as F

from lmlab.ffn.mlp import MLP
from lmlab.ffn.swiglu import SwiGLU
from tests.conftest import tiny_cfg


def gelu_new(x):
    """GPT-2's tanh approximation, written from the paper (Hendrycks & Gimpel 2016)."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


REFERENCE = {
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_tanh": gelu_new,
    "relu": lambda x: x.clamp_min(0),
    "silu": lambda x: x * torch.sigmoid(x),
    "leaky_relu": lambda x: torch.where(x > 0, x, 0.01 * x),
}


@pytest.mark.parametrize("act", sorted(REFERENCE))
def test_mlp_activations(act):
    cfg = tiny_cfg("gpt2", activation=act)
    mlp = MLP(cfg)
    x = torch.randn(2, 3, cfg.d_model)
    h = REFERENCE[act](x @ mlp.fc.weight.T + mlp.fc.bias)
    torch.testing.assert_close(mlp(x), h @ mlp.proj.weight.T + mlp.proj.bias, atol=1e-5, rtol=1e-5)
    assert cfg.d_ff == 4 * cfg.d_model


def test_swiglu_formula_and_width():
    cfg = tiny_cfg("llama", d_model=96)
    ffn = SwiGLU(cfg)
    assert cfg.d_ff == 256
    x = torch.randn(2, 3, 96)
    expected = (F.silu(x @ ffn.gate.weight.T) * (x @ ffn.up.weight.T)) @ ffn.down.weight.T
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    assert ffn.gate.bias is None
