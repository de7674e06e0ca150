"""Learned absolute position embeddings, added to token embeddings (GPT-2's `wpe`)."""

from __future__ import annotations

from torch import Tensor, nn

from lmlab.config import ModelConfig
from lmlab.pos.base import PositionScheme, token_positions
from lmlab.registry import POS


@POS.register(
    "learned",
    tags=("absolute",),
    caps={"remote_code": True, "short": "Learned", "seq2seq": True},
    paper="Radford et al. 2018/2019 (GPT, GPT-2)",
    aliases=("learned_absolute", "absolute"),
)
class LearnedPositions(PositionScheme):
    """A (max_seq_len, d_model) table; positions beyond max_seq_len are an error."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> int:
        """One add per feature."""
        return cfg.d_model

    def embed(self, x: Tensor, offset: int, pad: Tensor | None = None, starts: Tensor | None = None) -> Tensor:
        """Add the embeddings of positions offset..offset+T-1."""
        T = x.shape[1]
        if isinstance(offset, int) and offset + T > self.max_seq_len:
            raise ValueError(f"sequence of {offset + T} positions exceeds max_seq_len={self.max_seq_len}")
        return x + self.wpe(token_positions(T, offset, x.device, pad, starts))
