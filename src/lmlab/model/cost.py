"""The `lmlab arch` cost card: parameters and FLOPs per component, computed on the meta device."""

from __future__ import annotations

from collections import Counter

import torch

from lmlab.config import ModelConfig
from lmlab.model.flops import flops_breakdown
from lmlab.model.transformer import build_model


def params_by_component(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts grouped as embedding, position, attn, ffn, norm and lm_head (tied weights once)."""
    with torch.device("meta"):
        model = build_model(cfg)
    counts: Counter[str] = Counter()
    for name, p in model.named_parameters():  # shared (tied) parameters are yielded once
        head = name.split(".")[0]
        if head == "blocks":
            part = name.split(".")[2]
            key = "norm" if part.startswith("norm") else part
        else:
            key = {"tok_emb": "embedding", "pos": "position", "norm_f": "norm"}.get(head, head)
        counts[key] += p.numel()
    return dict(counts)


def cost_card(cfg: ModelConfig, seq_len: int) -> str:
    """A printable summary of a config's components, parameters and FLOPs per token."""
    params = params_by_component(cfg)
    flops = flops_breakdown(cfg, seq_len)
    total_p, total_f = sum(params.values()), sum(flops.values())
    lines = [
        f"{cfg.arch_name()}",
        f"  attn={cfg.attn} ffn={cfg.ffn} norm={cfg.norm} pos={cfg.pos} embed={cfg.embed} "
        f"act={cfg.activation} bias={cfg.bias} tied={cfg.tie_weights}",
        f"  d_model={cfg.d_model} n_head={cfg.n_head} n_kv_head={cfg.n_kv_head} head_dim={cfg.head_dim} "
        f"d_ff={cfg.d_ff} vocab={cfg.vocab_size} max_seq_len={cfg.max_seq_len}",
        "",
        f"  {'parameters':<14}{'count':>14}{'share':>9}",
    ]
    for k, v in sorted(params.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<14}{v:>14,}{100 * v / total_p:>8.1f}%")
    lines.append(f"  {'total':<14}{total_p:>14,}")
    lines += ["", f"  {'FLOPs/token':<14}{'forward':>14}{'share':>9}   (seq_len={seq_len})"]
    for k, v in sorted(flops.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<14}{v:>14,}{100 * v / total_f:>8.1f}%")
    lines.append(f"  {'total fwd':<14}{total_f:>14,}")
    lines.append(f"  {'train (3x)':<14}{3 * total_f:>14,}")
    kv_bytes = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4
    lines.append(f"\n  KV cache: {kv_bytes:,} bytes/token (fp32)")
    return "\n".join(lines)
