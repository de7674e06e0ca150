"""Token embedding: a (vocab_size, d_model) lookup table, shareable with the output head."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.config import ModelConfig
from lmlab.registry import EMBED


@EMBED.register(
    "token", tags=("dense",), caps={"remote_code": True, "short": "Tok"}, paper="Press & Wolf 2017 (weight tying)"
)
class TokenEmbedding(nn.Module):
    """ids (B, T) -> vectors (B, T, C); the model's initialiser fills the table."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))

    def forward(self, ids: Tensor) -> Tensor:
        """Look up each id's row."""
        return F.embedding(ids, self.weight)
