"""Fixed sinusoidal position encoding (Vaswani et al., 2017, §3.5), added to token embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmlab.config import ModelConfig
from lmlab.pos.base import PositionScheme, token_positions
from lmlab.registry import POS


def sinusoidal_table(positions: Tensor, d_model: int) -> Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)); shape (len, d_model)."""
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    angles = positions.double()[:, None] * div[None, :].to(positions.device)
    table = torch.zeros(len(positions), d_model, dtype=torch.float64, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.float()


@POS.register(
    "sinusoidal",
    tags=("absolute", "fixed"),
    caps={"remote_code": True, "short": "Sin", "seq2seq": True},
    paper="Vaswani et al. 2017, §3.5",
)
class SinusoidalPositions(PositionScheme):
    """No parameters; computed for any position, so it works past max_seq_len."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.d_model = cfg.d_model

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> int:
        """Per feature: position x frequency, its sine or cosine, and the add."""
        return 3 * cfg.d_model

    def embed(self, x: Tensor, offset: int, pad: Tensor | None = None, starts: Tensor | None = None) -> Tensor:
        """Add the encodings of positions offset..offset+T-1."""
        positions = token_positions(x.shape[1], offset, x.device, pad, starts)
        table = sinusoidal_table(positions.flatten(), self.d_model).to(x.dtype)
        return x + table.view(*positions.shape, self.d_model)
