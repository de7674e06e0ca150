"""Embeddings sharded across `torch.distributed` ranks (Megatron-LM, Shoeybi et al. 2019, §3).

`vocab_parallel`: each rank holds a contiguous slice of the vocabulary's rows; ids outside the
slice look up zeros and an all-reduce sums the partial results. `column_parallel`: each rank holds
a slice of the embedding dimension and an all-gather concatenates. Both are numerically the
unsharded embedding; without an initialised process group they are the plain table.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.config import ModelConfig
from lmlab.registry import EMBED


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _ReduceFromRanks(torch.autograd.Function):
    """Sum over ranks; the output is replicated, so each rank's gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class _GatherFromRanks(torch.autograd.Function):
    """Concatenate equal last-dim slices from all ranks; the backward keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor, rank: int, world: int) -> Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.width = rank, x.shape[-1]
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.narrow(-1, ctx.rank * ctx.width, ctx.width), None, None


def shard_range(size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank's near-equal contiguous slice of `size` items."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class _ShardedEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig, dim: int) -> None:
        super().__init__()
        self.rank, self.world = _world()
        self.dim = dim  # 0: rows of the vocabulary, 1: columns of the embedding
        full = (cfg.vocab_size, cfg.d_model)
        self.start, self.end = shard_range(full[dim], self.rank, self.world)
        shape = list(full)
        shape[dim] = self.end - self.start
        if self.world > 1 and cfg.tie_weights:
            raise ValueError("model.tie_weights: a sharded embedding cannot be tied to the full output head; set false")
        self.weight = nn.Parameter(torch.empty(*shape))

    def load_full(self, weight: Tensor) -> None:
        """Copy this rank's slice of a full (vocab, d_model) table."""
        with torch.no_grad():
            self.weight.copy_(weight.narrow(self.dim, self.start, self.end - self.start))


@EMBED.register(
    "vocab_parallel",
    tags=("sharded", "distributed"),
    caps={"short": "VocabPar"},
    paper="Shoeybi et al. 2019 (Megatron-LM), arXiv:1909.08053",
)
class VocabParallelEmbedding(_ShardedEmbedding):
    """Rows [start, end) of the vocabulary on each rank; all-reduce of masked lookups."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, dim=0)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (B, T) -> (B, T, C), identical on every rank."""
        if self.world == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (ids < self.start) | (ids >= self.end)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside[..., None], 0.0)
        return _ReduceFromRanks.apply(out)


@EMBED.register(
    "column_parallel",
    tags=("sharded", "distributed"),
    caps={"short": "ColPar"},
    paper="Shoeybi et al. 2019 (Megatron-LM), arXiv:1909.08053",
)
class ColumnParallelEmbedding(_ShardedEmbedding):
    """Columns [start, end) of the embedding dimension on each rank; all-gather of the slices."""

    def __init__(self, cfg: ModelConfig) -> None:
        _, world = _world()
        if cfg.d_model % world:
            raise ValueError(f"model.d_model: {cfg.d_model} must be divisible by the world size {world}")
        super().__init__(cfg, dim=1)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (B, T) -> (B, T, C), identical on every rank."""
        out = F.embedding(ids, self.weight)
        if self.world == 1:
            return out
        return _GatherFromRanks.apply(out, self.rank, self.world)
