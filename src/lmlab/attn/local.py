"""Sliding-window attention in O(T * w): queries in blocks, each attending to the keys of its own block and
the `w` before it (Longformer's banded attention, computed blockwise as in Mistral's reference code).

Query i sees keys j with i - w < j <= i. A block of b queries starting at position s can see keys in
[s - w + 1, s + b), so each block is one (b x (w + b)) attention with the same local mask: the work
and memory grow linearly in T instead of quadratically. Blocks of b = w / 2 keep the masked-out
share of each block's scores at a third while the matmuls stay large. An ALiBi bias depends only on
j - i, so it is one (b x (w + b)) table for every block. Keys before the sequence are zeros hidden
by the mask; the last block is padded, and padded keys lie after every real query, so causality
alone hides them and no real row is ever fully masked.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from lmlab.attn.base import additive


def _local_mask(w: int, b: int, nb: int, device: torch.device, slopes: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(nb, 1 or nh, b, w + b) additive mask: window key kk is query qq's neighbour iff qq < kk <= qq + w,
    and it exists (block c's first w - c*b keys lie before the sequence)."""
    qq = torch.arange(b, device=device)[:, None]
    kk = torch.arange(w + b, device=device)[None, :]
    c = torch.arange(nb, device=device)[:, None, None]
    allowed = (kk > qq) & (kk <= qq + w) & (kk >= w - c * b)  # (nb, b, w + b)
    mask = additive(allowed, dtype)[:, None]
    if slopes is None:
        return mask
    distance = (kk - w - qq).to(dtype)  # key position - query position, <= 0 where visible
    return mask + (slopes.to(dtype)[:, None, None] * distance)[None]


def blocked_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    *,
    slopes: Tensor | None = None,
    starts: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Causal attention of (B, nh, T, hs) queries on (B, nkv, T, hs) keys/values within `window` positions
    (GQA when nkv < nh), with an optional per-head ALiBi bias and document masking (`starts` (B, T): the
    slot where each token's document begins); equal to the dense masked computation."""
    B, H, T, hs = q.shape
    w = window
    b = max(1, w // 2)
    nb = -(-T // b)
    pad = nb * b - T
    # Blocks fold into the batch: the fused kernels take 4-D inputs only (5-D falls back to the math kernel).
    qb = F.pad(q, (0, 0, 0, pad)).view(B, H, nb, b, hs).transpose(1, 2).reshape(B * nb, H, b, hs)

    def windows(x: Tensor) -> Tensor:  # (B, h, T, hs) -> (B * nb, h, w + b, hs), block c's keys [c*b - w, c*b + b)
        win = F.pad(x, (0, 0, w, pad)).unfold(2, w + b, b).permute(0, 2, 1, 4, 3)
        return win.reshape(B * nb, x.shape[1], w + b, hs)

    mask = _local_mask(w, b, nb, q.device, slopes, q.dtype)[None]  # (1, nb, 1 or nh, b, w + b)
    if starts is not None:  # keys of another document are hidden too: (B, nb, 1, b, w + b)
        q_doc = F.pad(starts, (0, pad), value=-1).view(B, nb, b)
        k_doc = F.pad(starts, (w, pad), value=-1).unfold(1, w + b, b)  # (B, nb, w + b)
        other = q_doc[..., :, None] != k_doc[..., None, :]
        mask = mask.masked_fill(other[:, :, None], float("-inf"))
    mask = mask.expand(B, *mask.shape[1:]).reshape(B * nb, *mask.shape[2:])
    y = F.scaled_dot_product_attention(
        qb, windows(k), windows(v), attn_mask=mask, dropout_p=dropout_p, enable_gqa=k.shape[1] != H
    )
    return y.view(B, nb, H, b, hs).transpose(1, 2).reshape(B, H, nb * b, hs)[:, :, :T]
