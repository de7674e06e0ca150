"""Per-layer key/value caches for incremental decoding: a preallocated one and a window-sized ring."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of every token so far, preallocated as (B, n_kv_head, max_len, head_dim)."""

    def __init__(
        self,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
        *,
        v_dim: int | None = None,
    ) -> None:
        self.k = torch.zeros(batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros(batch, n_kv_head, max_len, v_dim or head_dim, device=device, dtype=dtype)
        self.length = 0  # tokens seen so far (= absolute position of the next token)
        self.first_position = 0  # every position is kept

    @property
    def capacity(self) -> int:
        """How many positions fit."""
        return self.k.shape[2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append new keys/values (B, n_kv, T, hs); return all keys, values and their absolute positions."""
        T = k.shape[2]
        end = self.length + T
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end], torch.arange(end, device=k.device)

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search: each surviving beam takes its parent's cache)."""
        self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class WindowKVCache:
    """Only the last `window - 1` tokens' keys/values survive an update: memory is O(window), not O(T).

    A query at position p sees keys p - window + 1 .. p, so after appending T new tokens the
    cache returns the previous window-1 tokens plus the T new ones, with their absolute positions.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.pos: Tensor | None = None
        self.length = 0

    @property
    def first_position(self) -> int:
        """Absolute position of the oldest key the next update will return."""
        return max(0, self.length - (self.window - 1))

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append (B, n_kv, T, hs) and return the visible keys, values and their absolute positions."""
        T = k.shape[2]
        new_pos = torch.arange(self.length, self.length + T, device=k.device)
        if self.k is None:
            k_all, v_all, pos = k, v, new_pos
        else:
            k_all, v_all = torch.cat([self.k, k], 2), torch.cat([self.v, v], 2)
            pos = torch.cat([self.pos, new_pos])
        keep = self.window - 1
        self.k, self.v, self.pos = k_all[:, :, -keep:], v_all[:, :, -keep:], pos[-keep:]
        self.length += T
        return k_all, v_all, pos

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
