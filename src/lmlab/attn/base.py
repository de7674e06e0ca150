"""Shared scaffolding of causal self-attention: projections, heads, rotary, cache, masks.

Subclasses implement only `attend(q, k, v, mask, is_causal)`, the part that differs between
the explicit-softmax reference and the fused kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmlab.config import ModelConfig
from lmlab.model.kv_cache import KVCache
from lmlab.pos.base import PosContext


def causal_mask(T: int, offset: int, device: torch.device) -> Tensor:
    """Boolean (T, offset+T) mask: query i (absolute offset+i) may see key j iff j <= offset+i."""
    q_pos = torch.arange(offset, offset + T, device=device)[:, None]
    k_pos = torch.arange(offset + T, device=device)[None, :]
    return k_pos <= q_pos


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with grouped key/value heads (GQA when n_kv_head < n_head)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.bias)
        self.proj.residual_projection = True  # scaled init, GPT-2 §2.3
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, *, pos: PosContext, cache: KVCache | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); with a cache, x holds the new tokens only."""
        B, T, _ = x.shape
        hs = self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=-1)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        q, k = pos.rotate(q, k)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nkv, offset+T, hs)
        mask, is_causal = self.mask_for(pos, T, k.shape[2], x.device, x.dtype)
        y = self.attend(q, k, v, mask, is_causal)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * hs))

    def mask_for(
        self, pos: PosContext, T: int, Tk: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor | None, bool]:
        """An additive float mask (or None with is_causal) for T queries against Tk keys."""
        offset = Tk - T
        if pos.bias is None:
            if offset == 0:
                return None, T > 1
            if T == 1:
                return None, False
        allowed = causal_mask(T, offset, device)
        mask = torch.zeros(T, Tk, device=device, dtype=dtype).masked_fill(~allowed, float("-inf"))
        if pos.bias is not None:
            mask = mask + pos.bias.to(dtype)
        return mask, False

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """Attention core on (B, nh, T, hs) queries and (B, nkv, Tk, hs) keys/values."""
        raise NotImplementedError

    def new_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty cache sized for this attention's keys and values."""
        return KVCache(batch, self.n_kv_head, max_len, self.head_dim, device, dtype)

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Forward FLOPs per token: projections and the full T x T score/value matmuls."""
        hs = cfg.head_dim
        proj = 2 * cfg.d_model * (cfg.n_head + 2 * cfg.n_kv_head) * hs + 2 * cfg.n_head * hs * cfg.d_model
        return {"attn_proj": proj, "attn_scores": 2 * 2 * seq_len * cfg.n_head * hs}
