"""Preallocated per-layer key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of the tokens seen so far, shape (B, n_kv_head, max_len, head_dim)."""

    def __init__(
        self, batch: int, n_kv_head: int, max_len: int, head_dim: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.k = torch.zeros(batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def capacity(self) -> int:
        """How many positions fit."""
        return self.k.shape[2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values (B, n_kv, T, hs) and return all of them so far."""
        T = k.shape[2]
        end = self.length + T
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]
