"""Attention blocks, registered in `lmlab.registry.ATTN`."""

from lmlab.attn.base import CausalSelfAttention
from lmlab.attn.mha import MHA
from lmlab.attn.mla import MLA
from lmlab.attn.native_sparse import NativeSparseAttention
from lmlab.attn.sdpa import SDPA
from lmlab.attn.sliding_window import SlidingWindowAttention

NativeSparse = NativeSparseAttention  # the short name users of other libraries reach for

__all__ = [
    "MHA",
    "MLA",
    "SDPA",
    "CausalSelfAttention",
    "NativeSparse",
    "NativeSparseAttention",
    "SlidingWindowAttention",
]
