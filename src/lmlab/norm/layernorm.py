"""Layer normalisation (Ba et al., 2016), with and without the additive bias."""

from __future__ import annotations

from torch import nn

from lmlab.config import ModelConfig
from lmlab.registry import NORM


@NORM.register(
    "layernorm",
    tags=("centering",),
    caps={"remote_code": True, "short": "LN"},
    paper="Ba et al. 2016, arXiv:1607.06450",
    aliases=("layer_norm",),
)
class LayerNorm(nn.LayerNorm):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim."""

    has_bias = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.d_model, eps=cfg.norm_eps, bias=self.has_bias)

    @classmethod
    def flops_per_token(cls, width: int) -> int:
        """Mean, centre, square, sum, scale, gain (and bias): 6 or 7 FLOPs per feature."""
        return (7 if cls.has_bias else 6) * width


@NORM.register(
    "layernorm_nobias", tags=("centering",), caps={"remote_code": True, "short": "LNnb"}, paper="Ba et al. 2016"
)
class LayerNormNoBias(LayerNorm):
    """LayerNorm with a gain but no bias (as in many recent GPT-style models)."""

    has_bias = False
