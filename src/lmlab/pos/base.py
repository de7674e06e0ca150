"""The position contract: `embed` adds absolute positions, `context` carries what attention needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmlab.config import ModelConfig


@dataclass
class PosContext:
    """What attention needs from the position scheme for one forward call.

    `offset` is the absolute position of the first query (the KV-cache length); `cos`/`sin`
    are rotary tables for the query positions, shape (T, rot_dim); `bias` is an additive
    attention bias of shape (n_head, T, T_k) or None.
    """

    offset: int = 0
    cos: Tensor | None = None
    sin: Tensor | None = None
    bias: Tensor | None = None

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the rotary tables to queries and new keys (B, nh, T, hs); identity without them."""
        if self.cos is None:
            return q, k
        return apply_rotary(q, self.cos, self.sin), apply_rotary(k, self.cos, self.sin)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (GPT-NeoX / Llama convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first cos.shape[-1] dims of x; the remaining dims pass through (partial rotary)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    out = x_rot * cos.to(x.dtype) + rotate_half(x_rot) * sin.to(x.dtype)
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


class PositionScheme(nn.Module):
    """Default scheme: no absolute embedding and an empty context."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_seq_len = cfg.max_seq_len

    def embed(self, x: Tensor, offset: int) -> Tensor:
        """Token embeddings (B, T, C) with absolute positions added, if the scheme has them."""
        return x

    def context(self, T: int, offset: int, device: torch.device) -> PosContext:
        """The PosContext for T queries starting at absolute position `offset`."""
        return PosContext(offset=offset)
