"""One transformer layer: attention and feed-forward sublayers with residuals, pre- or post-norm."""

from __future__ import annotations

from torch import Tensor, nn

from lmlab.config import ModelConfig
from lmlab.pos.base import PosContext


class Block(nn.Module):
    """Pre-norm (GPT-2, LLaMA): x + f(norm(x)); post-norm (Vaswani et al. 2017): norm(x + f(x))."""

    def __init__(self, cfg: ModelConfig, *, attn_cls: type, ffn_cls: type, norm_cls: type) -> None:
        super().__init__()
        self.norm1 = norm_cls(cfg)
        self.attn = attn_cls(cfg)
        self.norm2 = norm_cls(cfg)
        self.ffn = ffn_cls(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.norm_position == "pre"

    def forward(self, x: Tensor, *, pos: PosContext, cache=None) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        # Dropout is the identity in eval; skipping the module call saves real time per decode step.
        drop = self.drop if self.training else _identity
        if self.pre_norm:
            x = x + drop(self.attn(self.norm1(x), pos=pos, cache=cache))
            return x + drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + drop(self.attn(x, pos=pos, cache=cache)))
        return self.norm2(x + drop(self.ffn(x)))


def _identity(x: Tensor) -> Tensor:
    return x
