"""Attention blocks, registered in `lmlab.registry.ATTN`."""

from lmlab.attn.base import CausalSelfAttention
from lmlab.attn.mha import MHA
from lmlab.attn.sdpa import SDPA

__all__ = ["MHA", "SDPA", "CausalSelfAttention"]
