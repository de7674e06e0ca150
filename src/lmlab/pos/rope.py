"""Rotary position embedding (Su et al., RoFormer, 2021, eq. 34), Llama's half-split layout."""

from __future__ import annotations

import torch
from torch import Tensor

from lmlab.config import ModelConfig
from lmlab.pos.base import PosContext, PositionScheme
from lmlab.registry import POS


@POS.register("rope", tags=("relative", "rotary"), caps={"short": "RoPE"}, paper="Su et al. 2021, arXiv:2104.09864")
class RotaryPositions(PositionScheme):
    """Rotates query/key pairs (i, i + rot/2) by angle pos * theta^(-2i/rot); extrapolates past max_seq_len."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        rot = int(cfg.head_dim * cfg.rope.fraction) // 2 * 2
        if rot == 0:
            raise ValueError(
                f"model.rope.fraction: {cfg.rope.fraction} leaves no rotary dims of head_dim={cfg.head_dim}"
            )
        self.rot_dim = rot
        inv_freq = 1.0 / (cfg.rope.theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def _tables(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        # Tables are cached per device and grown on demand, so generation past max_seq_len works.
        if self._cache is None or self._cache[0] < length or self._cache[1] != device:
            n = max(length, self.max_seq_len)
            t = torch.arange(n, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))  # (n, rot/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, rot)
            self._cache = (n, device, emb.cos(), emb.sin())
        return self._cache[2], self._cache[3]

    def context(self, T: int, offset: int, device: torch.device) -> PosContext:
        """Rotary tables for positions offset..offset+T-1."""
        cos, sin = self._tables(offset + T, device)
        return PosContext(offset=offset, cos=cos[offset : offset + T], sin=sin[offset : offset + T])
