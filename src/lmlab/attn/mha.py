"""Multi-head attention with an explicit softmax (Vaswani et al., 2017, eq. 1): the readable reference."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from lmlab.attn.base import CausalSelfAttention, attention_probs
from lmlab.registry import ATTN


@ATTN.register(
    "mha",
    tags=("dense", "reference", "gqa"),
    caps={
        "remote_code": True,
        "hf_layout": "dense",
        "kv_cache": True,
        "seq2seq": True,
        "left_pad": True,
        "keeps_scores": True,
    },
    paper="Vaswani et al. 2017, arXiv:1706.03762",
    aliases=("manual",),
)
class MHA(CausalSelfAttention):
    """softmax(q k^T / sqrt(d) + bias) v, written out; GQA repeats each key/value head."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        """Explicit scores, mask, softmax and weighted sum."""
        return self.core(q, k, v, mask, is_causal, self.dropout if self.training else 0.0)

    @staticmethod
    def core(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout_p: float) -> Tensor:
        """(B, nh, T, hs) queries on (B, nkv, Tk, hs) keys/values; each key/value head serves nh / nkv queries."""
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            v = v.repeat_interleave(rep, dim=1)  # (B, nh, Tk, hs)
        att = attention_probs(q, k, mask, is_causal).to(q.dtype)
        att = F.dropout(att, p=dropout_p, training=dropout_p > 0)
        return att @ v  # (B, nh, T, hs)
