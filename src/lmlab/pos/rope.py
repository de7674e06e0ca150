"""Rotary position embedding (Su et al., RoFormer, 2021, eq. 34), Llama's half-split layout."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from lmlab.config import ModelConfig
from lmlab.pos.base import PosContext, PositionScheme, row_tables, table_length
from lmlab.registry import ATTN, POS


class RopeOptions(BaseModel):
    """Rotary embedding settings (RoFormer; Llama's half-split convention)."""

    model_config = ConfigDict(extra="forbid")
    theta: float = Field(10000.0, gt=0)
    fraction: float = Field(1.0, gt=0, le=1, description="fraction of each head's dims that rotate")


@POS.register(
    "rope",
    tags=("relative", "rotary"),
    caps={"remote_code": True, "short": "RoPE", "seq2seq": True},
    paper="Su et al. 2021, arXiv:2104.09864",
    options=RopeOptions,
)
class RotaryPositions(PositionScheme):
    """Rotates pairs (i, i + rot/2) by angle pos * theta^(-2i/rot); `rope.fraction` of each head rotates."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        rot = self.rot_dims(cfg)
        if rot == 0:
            raise ValueError(
                f"model.rope.fraction: {cfg.rope.fraction} leaves no rotary dims of head_dim={cfg.head_dim}"
            )
        self.rot_dim, self.theta = rot, cfg.rope.theta
        self._cache: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}

    @staticmethod
    def rot_dims(cfg: ModelConfig) -> int:
        """Rotated features per head: `rope.fraction` of head_dim, rounded down to an even count."""
        return int(cfg.head_dim * cfg.rope.fraction) // 2 * 2

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> int:
        """x cos + rotate(x) sin: 3 FLOPs per rotated query and key feature, in every layer."""
        attn = ATTN.get(cfg.attn)
        if hasattr(attn, "rotated_per_token"):  # attention with its own rotary layout (MLA's decoupled keys)
            rotated = attn.rotated_per_token(cfg)
        else:
            rotated = (cfg.n_head + cfg.n_kv_head) * cls.rot_dims(cfg)
        return 3 * cfg.n_layer * rotated

    def tables(self, length: int, device: torch.device, rot_dim: int | None = None) -> tuple[Tensor, Tensor]:
        """cos/sin tables (>= length, rot_dim) for positions 0..; cached per width and device, grown on demand."""
        rot = rot_dim or self.rot_dim
        cached = self._cache.get((rot, device))
        if cached is None or cached[0].shape[0] < length:
            n = max(length, self.max_seq_len)
            inv_freq = 1.0 / (self.theta ** (torch.arange(0, rot, 2, dtype=torch.float64, device=device) / rot))
            freqs = torch.outer(torch.arange(n, device=device, dtype=torch.float64), inv_freq)  # (n, rot/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, rot)
            cached = (emb.cos().float(), emb.sin().float())
            self._cache[(rot, device)] = cached
        return cached

    def context(
        self, T: int, offset: int, device: torch.device, pad: Tensor | None = None, starts: Tensor | None = None
    ) -> PosContext:
        """Rotary tables for positions offset..offset+T-1 (per row, (B, 1, T, rot), when padded or restarted
        per document)."""
        cos, sin = row_tables(*self.tables(table_length(offset, T, self.max_seq_len), device), offset, T, pad, starts)
        if pad is not None or starts is not None:
            cos, sin = cos[:, None], sin[:, None]
        return PosContext(offset, T, device, rotary=self, cos=cos, sin=sin, pad=pad, starts=starts)
