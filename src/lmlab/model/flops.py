"""Architecture-aware FLOPs per token, summed from each block's own `flops_per_token`.

Matmuls follow the convention `torch.utils.flop_counter.FlopCounterMode` uses: a (m x k) @ (k x n)
matmul costs 2mkn, and attention scores and the weighted sum count the full T x T square. Norms and
position encodings are elementwise work that FlopCounterMode does not see; they are counted too, by
each block's own formula (`norm` and `position`, about 1% of a small model and less of a large one).
Activations and softmax are not counted. Training costs 3x the forward (backward = 2x forward).
"""

from __future__ import annotations

from collections import Counter

from lmlab.config import ModelConfig
from lmlab.registry import ATTN, FFN, NORM, POS

# The groups a run log reports (`mfu.breakdown`): each component name maps to one.
GROUPS = {"attn_proj": "attention", "attn_scores": "attention", "router": "ffn", "ffn": "ffn"}


def norm_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs per token of every normalisation: two per block, the final norm (pre-norm), and
    any inside the attention (MLA's latent norms)."""
    norm_cls, attn_cls = NORM.get(cfg.norm), ATTN.get(cfg.attn)
    per_norm = norm_cls.flops_per_token(cfg.d_model) if hasattr(norm_cls, "flops_per_token") else 0
    n_norms = 2 * cfg.n_layer + (1 if cfg.norm_position == "pre" else 0)
    inner = attn_cls.norm_flops_per_token(cfg) if hasattr(attn_cls, "norm_flops_per_token") else 0
    return n_norms * per_norm + cfg.n_layer * inner


def flops_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token by component, for sequences of `seq_len` tokens."""
    total: Counter[str] = Counter()
    for cls in (ATTN.get(cfg.attn), FFN.get(cfg.ffn)):
        for name, flops in cls.flops_per_token(cfg, seq_len).items():
            total[name] += cfg.n_layer * flops
    pos_cls = POS.get(cfg.pos)
    total["position"] = pos_cls.flops_per_token(cfg, seq_len) if hasattr(pos_cls, "flops_per_token") else 0
    total["norm"] = norm_flops(cfg)
    total["lm_head"] = 2 * cfg.d_model * cfg.vocab_size
    return {k: v for k, v in total.items() if v}


def grouped_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token as attention, ffn, norm, position and lm_head (every group present)."""
    out = dict.fromkeys(("attention", "ffn", "norm", "position", "lm_head"), 0)
    for name, flops in flops_breakdown(cfg, seq_len).items():
        out[GROUPS.get(name, name)] += flops
    return out


def flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool = False) -> int:
    """Forward (or forward + backward when `training`) FLOPs per token."""
    fwd = sum(flops_breakdown(cfg, seq_len).values())
    return 3 * fwd if training else fwd
