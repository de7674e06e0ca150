"""SwiGLU feed-forward (Shazeer, 2020, "GLU Variants Improve Transformer", eq. 6), as in LLaMA."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.config import ModelConfig
from lmlab.registry import FFN


@FFN.register(
    "swiglu", tags=("gated",), caps={"d_ff_mult": 8 / 3, "short": "SwiGLU"}, paper="Shazeer 2020, arXiv:2002.05202"
)
class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); d_ff = 8/3 d_model keeps the parameter count of a 4x MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.down.residual_projection = True

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.down(F.silu(self.gate(x)) * self.up(x))

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Three matmuls of d_model x d_ff."""
        return {"ffn": 3 * 2 * cfg.d_model * cfg.d_ff}
