"""Per-layer key/value caches for incremental decoding: a preallocated one and a window-sized ring."""

from __future__ import annotations

import torch
from torch import Tensor


class Truncatable:
    """A cache that keeps every position in order, so it can forget the newest ones."""

    length: int

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (speculative decoding drops the rejected draft tokens)."""
        self.length = min(self.length, length)


class KVCache(Truncatable):
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
        self.positions = torch.arange(max_len, device=device)  # sliced per step instead of a new arange

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
        return self.k[:, :, :end], self.v[:, :, :end], self.positions[:end]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search: each surviving beam takes its parent's cache)."""
        self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class StaticKVCache:
    """A preallocated cache whose shapes never change: every update returns all `max_len` slots, and the
    count of tokens seen is a device tensor, so one compiled decode step (or CUDA graph) serves every
    position. Slots past the queries are hidden by the causal mask, which attention always builds from
    the tensor positions here (`PosContext.static`)."""

    first_position = 0

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, device, dtype) -> None:
        self.k = torch.zeros(batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = torch.zeros((), dtype=torch.long, device=device)
        self.positions = torch.arange(max_len, device=device)
        if hasattr(torch, "_dynamo"):  # fixed addresses: CUDA graphs may replay over the same buffers
            for t in (self.k, self.v, self.length):
                torch._dynamo.mark_static_address(t)

    def reset(self) -> None:
        """Empty the cache for a new prompt (in place: a compiled step keeps reading the same tensors)."""
        self.length.zero_()

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (rejected draft tokens); their slots are overwritten later."""
        self.length.fill_(length)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write (B, n_kv, T, hs) at the next T positions; return every slot and its position."""
        at = self.length + torch.arange(k.shape[2], device=k.device)
        self.k.index_copy_(2, at, k)
        self.v.index_copy_(2, at, v)
        self.length.add_(k.shape[2])
        return self.k, self.v, self.positions


class WindowKVCache:
    """A ring of `window` slots per layer: memory is O(window), not O(T), and nothing is copied per token.

    A query at position p sees keys p - window + 1 .. p. Position p is written to slot
    p % window, overwriting p - window, the one key no later query needs. A one-token update
    returns the whole ring (slot order, with each slot's absolute position, so masks and ALiBi
    need no special case); a longer update returns the previous window - 1 keys in order plus
    the new ones, then keeps the last `window` of them.
    """

    def __init__(
        self,
        window: int,
        batch: int,
        n_kv_head: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
        *,
        v_dim: int | None = None,
    ) -> None:
        self.window = window
        self.k = torch.zeros(batch, n_kv_head, window, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros(batch, n_kv_head, window, v_dim or head_dim, device=device, dtype=dtype)
        self.slot_pos = torch.zeros(window, dtype=torch.long, device=device)  # absolute position per slot
        self.length = 0

    @property
    def first_position(self) -> int:
        """Absolute position of the oldest key the next update will return."""
        return max(0, self.length - (self.window - 1))

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append (B, n_kv, T, hs) and return the visible keys, values and their absolute positions."""
        T, W, start = k.shape[2], self.window, self.length
        if T == 1:
            slot = start % W
            self.k[:, :, slot : slot + 1], self.v[:, :, slot : slot + 1] = k, v
            self.slot_pos[slot] = start
            self.length += 1
            n = min(self.length, W)  # slots fill in order until the ring wraps
            return self.k[:, :, :n], self.v[:, :, :n], self.slot_pos[:n]
        kept = min(start, W - 1)
        old = torch.arange(start - kept, start, device=k.device)
        k_all = torch.cat([self.k[:, :, old % W], k], 2)
        v_all = torch.cat([self.v[:, :, old % W], v], 2)
        pos = torch.cat([old, torch.arange(start, start + T, device=k.device)])
        last = pos[-W:]
        self.k[:, :, last % W], self.v[:, :, last % W] = k_all[:, :, -W:], v_all[:, :, -W:]
        self.slot_pos[last % W] = last
        self.length += T
        return k_all, v_all, pos

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search)."""
        self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
