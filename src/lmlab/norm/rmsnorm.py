"""Root-mean-square normalisation (Zhang & Sennrich, 2019, eq. 4), computed in float32 as in LLaMA."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmlab.config import ModelConfig
from lmlab.registry import NORM


@NORM.register(
    "rmsnorm",
    tags=("scaling",),
    caps={"remote_code": True, "short": "RMS"},
    paper="Zhang & Sennrich 2019, arXiv:1910.07467",
    aliases=("rms_norm",),
)
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight; no centering, no bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps = cfg.norm_eps
        self.weight = nn.Parameter(torch.ones(cfg.d_model))

    @classmethod
    def flops_per_token(cls, width: int) -> int:
        """Square, sum, scale, gain: 4 FLOPs per feature (the rsqrt is one per row)."""
        return 4 * width

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dim."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)
