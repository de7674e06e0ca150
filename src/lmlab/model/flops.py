"""Architecture-aware FLOPs per token, summed from each block's own `flops_per_token`.

Convention (the one `torch.utils.flop_counter.FlopCounterMode` uses): a (m x k) @ (k x n) matmul
costs 2mkn; attention scores and the weighted sum count the full T x T square; norms, activations
and softmax are not counted. Training costs 3x the forward (backward = 2x forward).
"""

from __future__ import annotations

from collections import Counter

from lmlab.config import ModelConfig
from lmlab.registry import ATTN, FFN


def flops_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token by component, for sequences of `seq_len` tokens."""
    total: Counter[str] = Counter()
    for cls in (ATTN.get(cfg.attn), FFN.get(cfg.ffn)):
        for name, flops in cls.flops_per_token(cfg, seq_len).items():
            total[name] += cfg.n_layer * flops
    total["lm_head"] = 2 * cfg.d_model * cfg.vocab_size
    return dict(total)


def flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool = False) -> int:
    """Forward (or forward + backward when `training`) FLOPs per token."""
    fwd = sum(flops_breakdown(cfg, seq_len).values())
    return 3 * fwd if training else fwd
