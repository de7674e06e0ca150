"""The position contract: `embed` adds absolute positions, `context` carries what attention needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lmlab.config import ModelConfig


@dataclass
class PosContext:
    """What attention needs from the position scheme for one forward call.

    `offset` is the absolute position of the first of `T` queries. `rotary` is the scheme that
    makes rotary tables (RoPE), `cos`/`sin` its tables for these queries at the default width.
    `slopes` are per-head ALiBi slopes. Attention asks `bias(q_pos, k_pos)` for an additive bias
    given the absolute positions of its queries and keys, so ring caches and windows work too.

    `pad` (B,) counts left-padding slots per row of a batched prompt: slot s of row b holds the
    token at position s - pad[b]. Masks work on slots (relative distances are the same), while
    embeddings and rotary tables use each row's own positions, so a padded row computes what it
    would alone.

    `starts` (B, T) is the slot where each token's document begins, for packed training windows with
    document masking: attention stays inside a document and positions restart at each document.

    `offset` is a 0-dim device tensor when decoding through a static cache (`static`): positions are then
    computed on the device and masks are always built, so no shape depends on the position.
    """

    offset: int | Tensor
    T: int
    device: torch.device
    rotary: Any = None
    cos: Tensor | None = None
    sin: Tensor | None = None
    slopes: Tensor | None = None
    pad: Tensor | None = None
    starts: Tensor | None = None
    _q_pos: Tensor | None = field(default=None, repr=False)

    @property
    def q_pos(self) -> Tensor:
        """Absolute positions of the queries, (T,)."""
        if self._q_pos is None:
            self._q_pos = torch.arange(self.T, device=self.device) + self.offset
        return self._q_pos

    @property
    def static(self) -> bool:
        """Whether the position is a device tensor (a static-cache decode step)."""
        return isinstance(self.offset, Tensor)

    def rotate(self, *xs: Tensor) -> tuple[Tensor, ...]:
        """Apply the rotary tables to queries / new keys (B, nh, T, hs); identity without them."""
        if self.cos is None:
            return xs
        return tuple(apply_rotary(x, self.cos, self.sin) for x in xs)

    def rotate_all(self, x: Tensor) -> Tensor:
        """Rotate every dim of x (..., T, r) with tables of width r (MLA's decoupled rope part)."""
        if self.rotary is None or x.shape[-1] == 0:
            return x
        cos, sin = self.rotary.tables(
            table_length(self.offset, self.T, self.rotary.max_seq_len), self.device, x.shape[-1]
        )
        cos, sin = row_tables(cos, sin, self.offset, self.T, self.pad, self.starts)
        if (self.pad is not None or self.starts is not None) and x.dim() == 4:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, r) against (B, nh, T, r)
        return apply_rotary(x, cos, sin)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        """Additive attention bias (n_head, Tq, Tk), or None when the scheme adds none."""
        if self.slopes is None:
            return None
        distance = (k_pos[None, :] - q_pos[:, None]).to(self.slopes.dtype)  # <= 0 for visible keys
        return self.slopes[:, None, None] * distance


def table_length(offset: int | Tensor, T: int, max_seq_len: int) -> int:
    """Rows a position table needs for T slots from `offset` (max_seq_len when the offset is on the device)."""
    return max_seq_len if isinstance(offset, Tensor) else offset + T


def token_positions(
    T: int, offset: int | Tensor, device: torch.device, pad: Tensor | None = None, starts: Tensor | None = None
) -> Tensor:
    """Positions of slots offset..offset+T-1: (T,), or (B, T) shifted left by each row's padding (pads get 0)
    or, with `starts`, counted from each token's document start."""
    positions = torch.arange(T, device=device) + offset
    if starts is not None:
        return positions[None, :] - starts
    if pad is None:
        return positions
    return (positions[None, :] - pad[:, None]).clamp_min(0)


def row_tables(
    cos: Tensor, sin: Tensor, offset: int | Tensor, T: int, pad: Tensor | None, starts: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Rows of full rotary tables for T slots from `offset`: (T, r), or (B, T, r) with per-row padding or
    document starts."""
    if pad is None and starts is None and not isinstance(offset, Tensor):
        return cos[offset : offset + T], sin[offset : offset + T]
    positions = token_positions(T, offset, cos.device, pad, starts)
    return cos[positions], sin[positions]


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

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> int:
        """Elementwise FLOPs per token the scheme adds to a forward pass over all layers (none here)."""
        return 0

    def embed(self, x: Tensor, offset: int, pad: Tensor | None = None, starts: Tensor | None = None) -> Tensor:
        """Token embeddings (B, T, C) with absolute positions added, if the scheme has them."""
        return x

    def context(
        self, T: int, offset: int, device: torch.device, pad: Tensor | None = None, starts: Tensor | None = None
    ) -> PosContext:
        """The PosContext for T queries starting at absolute position `offset` (`pad`, `starts`: see PosContext)."""
        return PosContext(offset=offset, T=T, device=device, pad=pad, starts=starts)
