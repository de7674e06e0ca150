"""Multi-head attention with an explicit softmax (Vaswani et al., 2017, eq. 1): the readable reference."""

from __future__ import annotations

import math

from torch import Tensor
from torch.nn import functional as F

from lmlab.attn.base import CausalSelfAttention, masked_scores
from lmlab.registry import ATTN


@ATTN.register(
    "mha",
    tags=("dense", "reference", "gqa"),
    caps={"kv_cache": True, "seq2seq": True, "left_pad": True},
    paper="Vaswani et al. 2017, arXiv:1706.03762",
)
class MHA(CausalSelfAttention):
    """softmax(q k^T / sqrt(d) + bias) v, written out; GQA repeats each key/value head."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """Explicit scores, mask, softmax and weighted sum."""
        rep = self.n_head // self.n_kv_head
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)  # (B, nh, Tk, hs)
            v = v.repeat_interleave(rep, dim=1)
        att = masked_scores((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1])), mask, is_causal)
        att = F.softmax(att.float(), dim=-1).to(q.dtype)
        att = F.dropout(att, p=self.dropout, training=self.training)
        return att @ v  # (B, nh, T, hs)
