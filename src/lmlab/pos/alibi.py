"""ALiBi: attention with linear biases (Press et al., 2022, §3): score += -slope_h * (i - j)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmlab.config import ModelConfig
from lmlab.pos.base import PosContext, PositionScheme
from lmlab.registry import POS


def alibi_slopes(n_head: int) -> Tensor:
    """Geometric slopes 2^(-8/n), 2^(-16/n), ...; for n not a power of two, the paper's interleaving."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        slopes = power_of_two(n_head)
    else:
        closest = 2 ** math.floor(math.log2(n_head))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


@POS.register(
    "alibi",
    tags=("relative", "bias"),
    caps={"remote_code": True, "short": "ALiBi"},
    paper="Press et al. 2022, arXiv:2108.12409",
)
class ALiBiPositions(PositionScheme):
    """No embeddings; each head penalises attention linearly in query-key distance. Extrapolates."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("slopes", alibi_slopes(cfg.n_head), persistent=False)

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> int:
        """Slope x distance and the add, per score of every head and layer (the full T x T square, as the
        attention scores are counted)."""
        return 2 * cfg.n_layer * cfg.n_head * seq_len

    def context(
        self, T: int, offset: int, device: torch.device, pad: Tensor | None = None, starts: Tensor | None = None
    ) -> PosContext:
        """A context carrying the slopes; attention turns them into a bias for its key positions."""
        return PosContext(offset, T, device, slopes=self.slopes.to(device), pad=pad, starts=starts)
