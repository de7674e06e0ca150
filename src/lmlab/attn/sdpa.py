"""Multi-head attention through `F.scaled_dot_product_attention` (flash / memory-efficient kernels)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from lmlab.attn.base import CausalSelfAttention
from lmlab.attn.flex import flex_causal_attention
from lmlab.attn.local import blocked_window_attention
from lmlab.errors import ConfigError
from lmlab.pos.base import PosContext
from lmlab.registry import ATTN


@ATTN.register(
    "sdpa",
    tags=("dense", "fused", "gqa"),
    caps={"remote_code": True, "hf_layout": "dense", "kv_cache": True, "seq2seq": True, "left_pad": True},
    paper="Vaswani et al. 2017; Dao et al. 2022 (FlashAttention)",
    aliases=("flash",),
)
class SDPA(CausalSelfAttention):
    """Same math as `mha`, computed by PyTorch's fused attention; GQA via `enable_gqa`."""

    def attend_sequence(self, q: Tensor, k: Tensor, v: Tensor, pos: PosContext) -> Tensor | None:
        """By `model.attn_backend`: FlexAttention, the blocked window (O(T*w)), or None (one dense SDPA call)."""
        T = q.shape[2]
        dropout = self.dropout if self.training else 0.0
        training = torch.is_grad_enabled() and q.requires_grad
        backend = self.backend
        if backend == "auto":
            backend = "flex" if q.device.type == "cuda" and not dropout else "eager"
        if backend == "flex":
            if dropout:
                raise ConfigError(
                    "model.attn_backend: flex has no attention dropout; allowed with dropout: auto, eager, sdpa"
                )
            return flex_causal_attention(q, k, v, self.window, slopes=pos.slopes, starts=pos.starts, training=training)
        if backend == "eager" and self.window is not None and self.window < T:
            return blocked_window_attention(
                q, k, v, self.window, slopes=pos.slopes, starts=pos.starts, dropout_p=dropout
            )
        return None  # dense: one SDPA call with the causal (and document) mask

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """One fused call; dropout on the attention weights only while training."""
        return self.core(q, k, v, mask, is_causal, self.dropout if self.training else 0.0)

    @staticmethod
    def core(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout_p: float) -> Tensor:
        """(B, nh, T, hs) queries on (B, nkv, Tk, hs) keys/values through the fused kernel (GQA when nkv < nh)."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1]
        )
