"""The `lmlab arch` cost card: parameters, FLOPs, KV cache and activation memory, on the meta device."""

from __future__ import annotations

from collections import Counter

import torch

from lmlab.attn.base import CausalSelfAttention
from lmlab.config import ModelConfig
from lmlab.model.build import build_model
from lmlab.model.flops import flops_breakdown
from lmlab.model.init import NoRandomInit
from lmlab.registry import ATTN, FFN


def meta_model(cfg: ModelConfig):
    """The model `cfg` describes, on the meta device (shapes only, nothing initialised)."""
    with torch.device("meta"), NoRandomInit():
        return build_model(cfg)


def param_counts(cfg: ModelConfig) -> dict:
    """What a run's meta/params.json holds: the total and, for decoders, the count per component."""
    if cfg.arch == "seq2seq":
        return {"total": meta_model(cfg).num_params()}
    parts = params_by_component(cfg)
    return {"total": sum(parts.values()), "by_component": parts}


def params_by_component(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts grouped as embedding, position, attn, ffn, norm and lm_head (tied weights once)."""
    model = meta_model(cfg)
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


def active_params(cfg: ModelConfig, params: dict[str, int]) -> int:
    """Parameters one token touches: all but the experts it is not routed to."""
    total = sum(params.values())
    ffn_cls = FFN.get(cfg.ffn)
    if not hasattr(ffn_cls, "active_params"):
        return total
    per_layer = params["ffn"] // cfg.n_layer
    return total - params["ffn"] + cfg.n_layer * ffn_cls.active_params(cfg, per_layer)


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 2) -> int:
    """KV-cache bytes per generated token over all layers, as the configured attention stores it."""
    return ATTN.get(cfg.attn).kv_bytes_per_token(cfg, bytes_per_value)


def activation_bytes(cfg: ModelConfig, seq_len: int, batch: int = 1, bytes_per_value: int = 2) -> int:
    """Training activation memory estimate (Korthikanti et al. 2022, eq. 2: sbh(34 + 5as/h) per layer).

    Fused attention kernels do not keep the s x s score matrix, so the 5as/h term is dropped for
    them; the fp32 logits are added. Dropout masks are counted as in the paper.
    """
    s, b, h, a = seq_len, batch, cfg.d_model, cfg.n_head
    keeps_scores = bool(ATTN.entry(cfg.attn).caps.get("keeps_scores"))
    per_layer = s * b * h * 34 + (5 * a * s * s * b if keeps_scores else 0)
    per_layer = per_layer * bytes_per_value // 2  # the paper's figure is for 16-bit activations
    return cfg.n_layer * per_layer + 4 * s * b * cfg.vocab_size


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PiB"


def cost_card(cfg: ModelConfig, seq_len: int) -> str:
    """A printable summary of a config's components, parameters, FLOPs and memory."""
    params = params_by_component(cfg)
    flops = flops_breakdown(cfg, seq_len)
    total_p, total_f = sum(params.values()), sum(flops.values())
    lines = [
        f"{cfg.arch_name()}",
        f"  attn={cfg.attn} ffn={cfg.ffn} norm={cfg.norm} pos={cfg.pos} embed={cfg.embed} "
        f"act={cfg.activation} bias=qkv:{cfg.qkv_bias}/proj:{cfg.attn_proj_bias}/ffn:{cfg.ffn_bias} tied={cfg.tie_weights}",
        f"  d_model={cfg.d_model} n_head={cfg.n_head} n_kv_head={cfg.n_kv_head} head_dim={cfg.head_dim} "
        f"d_ff={cfg.d_ff} vocab={cfg.vocab_size} max_seq_len={cfg.max_seq_len}",
        "",
        f"  {'parameters':<14}{'count':>14}{'share':>9}",
    ]
    for k, v in sorted(params.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<14}{v:>14,}{100 * v / total_p:>8.1f}%")
    lines.append(f"  {'total':<14}{total_p:>14,}")
    active = active_params(cfg, params)
    if active != total_p:
        lines.append(f"  {'active/token':<14}{active:>14,}{100 * active / total_p:>8.1f}%")
    lines += ["", f"  {'FLOPs/token':<14}{'forward':>14}{'share':>9}   (seq_len={seq_len})"]
    for k, v in sorted(flops.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<14}{v:>14,}{100 * v / total_f:>8.1f}%")
    lines.append(f"  {'total fwd':<14}{total_f:>14,}")
    lines.append(f"  {'train (3x)':<14}{3 * total_f:>14,}")
    lines.append("  (norm and position are elementwise FLOPs, counted by formula; the rest are matmuls)")
    kv = kv_cache_bytes_per_token(cfg)
    mha = CausalSelfAttention.kv_bytes_per_token(cfg.model_copy(update={"n_kv_head": cfg.n_head}))
    lines += [
        "",
        f"  KV cache      {kv:>14,} bytes/token (bf16)   {100 * kv / mha:.1f}% of MHA with the same d_model and heads "
        f"({mha:,} bytes/token)",
        f"  activations   {_fmt_bytes(activation_bytes(cfg, seq_len)):>14} per sequence of {seq_len} (bf16, training, "
        "no recompute; Korthikanti et al. 2022)",
    ]
    return "\n".join(lines)
