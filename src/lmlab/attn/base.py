"""Shared scaffolding of causal self-attention: projections, heads, rotary, cache, masks.

Subclasses implement only `attend(q, k, v, mask, is_causal)`, the part that differs between
the explicit-softmax reference and the fused kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.attn.kv_cache import KVCache, WindowKVCache
from lmlab.config import ModelConfig
from lmlab.pos.base import PosContext


def visible(q_pos: Tensor, k_pos: Tensor, window: int | None = None) -> Tensor:
    """Boolean (Tq, Tk): key j is visible to query i iff k_pos[j] <= q_pos[i] (and within the window)."""
    ok = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        ok &= k_pos[None, :] > q_pos[:, None] - window
    return ok


def additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as an additive one: 0 where allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def key_padding_mask(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 1, 1, Tk) additive mask from a (B, Tk) validity mask: -inf on padded keys, 0 elsewhere."""
    return additive(valid.bool(), dtype)[:, None, None, :]


def padding_mask(pad: Tensor, q_pos: Tensor, k_pos: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 1, Tq, Tk) additive mask hiding each row's left-padding keys (slot < pad[b]).

    A padding query still sees itself, so no row of scores is all -inf: a NaN there would reach
    real tokens through 0 * NaN in the value sum.
    """
    allowed = (k_pos[None, None, :] >= pad[:, None, None]) | (k_pos[None, None, :] == q_pos[None, :, None])
    return additive(allowed, dtype)[:, None]


def document_mask(starts: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 1, T, T) additive mask of a packed window: a key is hidden unless it is in the query's document
    (tokens of one document share their start slot). Keys are the window's own tokens (no cache)."""
    return additive(starts[:, :, None] == starts[:, None, :], dtype)[:, None]


def attention_mask(
    pos: PosContext,
    k_pos: Tensor,
    window: int | None,
    dtype: torch.dtype,
    k_first: int | None = None,
    key_mask: Tensor | None = None,
) -> tuple[Tensor | None, bool]:
    """An additive float mask (nh or 1, Tq, Tk), or (None, is_causal) when the plain causal kernel suffices.

    `k_first` is the absolute position of the first key (a plain int, so no device sync is needed);
    default: keys start with the queries. `key_mask` (B, 1, 1, Tk), from `key_padding_mask`, also
    hides padded keys, as does `pos.pad` (left-padded prompts); the result is then (B, 1, Tq, Tk).
    """
    q_pos = pos.q_pos
    if pos.pad is not None:
        pad_mask = padding_mask(pos.pad, q_pos, k_pos, dtype)
        key_mask = pad_mask if key_mask is None else key_mask + pad_mask
    if pos.starts is not None:
        doc = document_mask(pos.starts, dtype)
        key_mask = doc if key_mask is None else key_mask + doc
    bias = pos.bias(q_pos, k_pos)
    span = pos.T + (0 if k_first is None else pos.offset - k_first)  # widest query-key distance
    if not pos.static and bias is None and key_mask is None and (window is None or window >= span):
        if len(k_pos) == len(q_pos):
            return None, len(q_pos) > 1  # keys are exactly the queries: standard causal mask
        if len(q_pos) == 1:
            return None, False  # one new token sees every cached key
    mask = additive(visible(q_pos, k_pos, window), dtype)
    mask = mask if bias is None else mask + bias.to(dtype)
    return (mask if key_mask is None else mask + key_mask), False


def masked_scores(scores: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    """Scores (..., T, Tk) with the additive mask added, or future keys set to -inf when is_causal."""
    if is_causal:
        T, Tk = scores.shape[-2:]
        allowed = torch.ones(T, Tk, dtype=torch.bool, device=scores.device).tril(Tk - T)
        return scores.masked_fill(~allowed, float("-inf"))
    return scores if mask is None else scores + mask


def attention_probs(q: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) in float32, (B, nh, T, Tk), for (B, nh, T, hs) queries on
    (B, nkv, Tk, hs) keys: each key head serves nh / nkv query heads."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)  # (B, nh, Tk, hs)
    scores = masked_scores((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1])), mask, is_causal)
    return F.softmax(scores.float(), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with grouped key/value heads (GQA when n_kv_head < n_head)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.window, self.backend = cfg.window, cfg.attn_backend
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.attn_proj_bias)
        self.proj.residual_projection = True  # scaled init, GPT-2 §2.3
        self.dropout = cfg.dropout

    def forward(
        self, x: Tensor, *, pos: PosContext, cache=None, key_mask: Tensor | None = None, causal: bool = True
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C); with a cache, x holds the new tokens only.

        `key_mask` (B, 1, 1, Tk) hides padded keys; `causal=False` lets every query see every
        unpadded key (an encoder's bidirectional self-attention).
        """
        B, T, _ = x.shape
        hs = self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=-1)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        q, k = pos.rotate(q, k)
        k_first = None
        if cache is not None:
            k_first = cache.first_position
            k, v, k_pos = cache.update(k, v)  # (B, nkv, Tk, hs)
        else:
            k_pos = pos.q_pos
        y = None
        if causal and cache is None and key_mask is None and pos.pad is None:
            y = self.attend_sequence(q, k, v, pos)  # a whole sequence: a kernel that skips hidden keys, if any
        if y is None:
            if causal:
                mask, is_causal = attention_mask(pos, k_pos, self.window, q.dtype, k_first, key_mask)
            else:
                mask, is_causal = key_mask, False
            y = self.attend(q, k, v, mask, is_causal)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * hs))

    def attend_sequence(self, q: Tensor, k: Tensor, v: Tensor, pos: PosContext) -> Tensor | None:
        """Causal attention over a whole unpadded sequence by a cheaper kernel, or None for the masked path."""
        return None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """Attention core on (B, nh, T, hs) queries and (B, nkv, Tk, hs) keys/values."""
        raise NotImplementedError

    def new_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        """An empty cache: window-sized when the attention is windowed, else preallocated to max_len."""
        if self.window is not None and self.window < max_len:
            return WindowKVCache(self.window, batch, self.n_kv_head, self.head_dim, device, dtype)
        return KVCache(batch, self.n_kv_head, max_len, self.head_dim, device, dtype)

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Forward FLOPs per token: projections and the T x T score/value matmuls the kernel computes."""
        hs = cfg.head_dim
        proj = 2 * cfg.d_model * (cfg.n_head + 2 * cfg.n_kv_head) * hs + 2 * cfg.n_head * hs * cfg.d_model
        return {"attn_proj": proj, "attn_scores": 2 * 2 * seq_len * cfg.n_head * hs}

    @classmethod
    def kv_bytes_per_token(cls, cfg: ModelConfig, bytes_per_value: int = 2) -> int:
        """Cache bytes per token across all layers (keys and values)."""
        return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * bytes_per_value
