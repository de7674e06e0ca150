"""FlexAttention (torch.nn.attention.flex_attention) for whole causal sequences: block masks skip the key
blocks a window or a document boundary hides, and ALiBi is a score modification.

Compiled once per process (the eager flex_attention is a slow reference); the block mask is built per
(length, window, device) and reused. This torch has no FlexAttention backward on CPU, so training on CPU
uses the eager blocked path (`lmlab.attn.local`) instead.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from lmlab.errors import ConfigError


def flex_available(device: torch.device, training: bool) -> bool:
    """Whether FlexAttention runs here: CUDA for training and inference, CPU for inference only."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or (device.type == "cpu" and not training)


@functools.cache
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _block_mask_of(T: int, window: int | None, device: str, starts: Tensor | None = None):
    """Causal, windowed and (with `starts` (B, T)) inside each token's document: one block mask per batch."""
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(b, h, q_idx, kv_idx):
        ok = kv_idx <= q_idx
        if starts is not None:
            ok = ok & (starts[b, q_idx] == starts[b, kv_idx])
        return ok if window is None else ok & (q_idx - kv_idx < window)

    B = None if starts is None else starts.shape[0]
    return create_block_mask(allowed, B=B, H=None, Q_LEN=T, KV_LEN=T, device=device)


# Without documents the mask depends only on (length, window, device): built once and reused.
_block_mask = functools.lru_cache(maxsize=32)(_block_mask_of)


def flex_causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    *,
    slopes: Tensor | None = None,
    starts: Tensor | None = None,
    training: bool,
) -> Tensor:
    """Causal (windowed) attention of (B, nh, T, hs) queries on (B, nkv, T, hs) keys/values, ALiBi optional,
    kept inside documents when `starts` (B, T) is given."""
    if not flex_available(q.device, training):
        raise ConfigError(
            f"model.attn_backend: flex cannot train on {q.device.type} in this torch (no FlexAttention backward); "
            "allowed here: auto, eager, sdpa"
        )
    score_mod = None
    if slopes is not None:
        slopes = slopes.to(q.dtype)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

    T = q.shape[2]
    device = str(q.device)
    mask = _block_mask(T, window, device) if starts is None else _block_mask_of(T, window, device, starts)
    return _compiled()(q, k, v, score_mod=score_mod, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
