"""Sliding-window causal attention (Beltagy et al., Longformer, 2020; as used in Mistral 7B).

Each token attends to itself and the `window - 1` tokens before it. Stacked layers still carry
information further back (receptive field n_layer * window). The KV cache keeps only the window.
"""

from __future__ import annotations

from lmlab.attn.sdpa import SDPA
from lmlab.config import ModelConfig
from lmlab.registry import ATTN


@ATTN.register(
    "sliding_window",
    tags=("local", "fused", "gqa"),
    caps={
        "remote_code": True,
        "hf_layout": "dense",
        "kv_cache": True,
        "requires": ["window"],
        "short": "SWA",
        "left_pad": True,
    },
    paper="Beltagy et al. 2020, arXiv:2004.05150; Jiang et al. 2023 (Mistral)",
    aliases=("swa", "local"),
)
class SlidingWindowAttention(SDPA):
    """SDPA restricted to a band of `window` keys, with a window-sized ring KV cache."""

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Projections plus scores over at most `window` keys (the work a banded kernel does)."""
        flops = super().flops_per_token(cfg, seq_len)
        flops["attn_scores"] = 2 * 2 * min(seq_len, cfg.window) * cfg.n_head * cfg.head_dim
        return flops
