import pytest
import torch
from torch.nn import functional as F

from lmlab.ffn.gated_mlp import GatedMLP
from lmlab.ffn.geglu import GeGLU
from tests.conftest import tiny_cfg


@pytest.mark.parametrize(
    ("cls", "act", "fn"),
    [
        (GeGLU, "gelu", F.gelu),
        (GeGLU, "gelu_tanh", lambda t: F.gelu(t, approximate="tanh")),
        (GatedMLP, "relu", F.relu),
        (GatedMLP, "silu", F.silu),
    ],
)
def test_gated_formulas(cls, act, fn):
    cfg = tiny_cfg("llama", activation=act, d_model=96)
    ffn = cls(cfg)
    x = torch.randn(2, 3, 96)
    expected = (fn(x @ ffn.gate.weight.T) * (x @ ffn.up.weight.T)) @ ffn.down.weight.T
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    assert cfg.d_ff == 256
