"""Multi-head Latent Attention (DeepSeek-V2, Liu et al. 2024, §2.1, eqs. 9-19).

Keys and values come from one low-rank latent c_kv = W_DKV x (eq. 9); the rotary part of the key
is a separate small projection shared by all heads (eqs. 14-16), so RoPE does not block caching
the latent. The KV cache stores only c_kv and the shared rope key: (kv_lora_rank +
qk_rope_head_dim) values per token per layer, instead of 2 * n_head * head_dim.

Two equal ways to attend: the naive form expands c_kv into per-head keys/values (training); the
absorbed form folds W_UK into the query and W_UV into the output and attends in latent space
(decoding from the cache, §2.1.2's "absorb" remark).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.attn.base import attention_mask, masked_scores
from lmlab.attn.kv_cache import Truncatable
from lmlab.config import ModelConfig
from lmlab.pos.base import PosContext
from lmlab.registry import ATTN


def mla_dims(cfg: ModelConfig) -> dict[str, int | None]:
    """Resolved MLA widths: kv_lora_rank, q_lora_rank, rope, nope, v."""
    m, hs = cfg.mla, cfg.head_dim
    return {
        "kv_rank": m.kv_lora_rank or 4 * hs,
        "q_rank": m.q_lora_rank,
        "rope": hs // 2 if m.qk_rope_head_dim is None else m.qk_rope_head_dim,
        "nope": m.qk_nope_head_dim or hs,
        "v": m.v_head_dim or hs,
    }


class LatentCache(Truncatable):
    """Cached compressed latents (B, T, kv_rank) and shared rope keys (B, T, rope)."""

    def __init__(self, batch: int, max_len: int, kv_rank: int, rope: int, device, dtype) -> None:
        self.c_kv = torch.zeros(batch, max_len, kv_rank, device=device, dtype=dtype)
        self.k_rope = torch.zeros(batch, max_len, rope, device=device, dtype=dtype)
        self.length = 0
        self.first_position = 0  # every position is kept

    def update(self, c_kv: Tensor, k_rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append; return all latents, rope keys and their absolute positions."""
        end = self.length + c_kv.shape[1]
        if end > self.c_kv.shape[1]:
            raise ValueError(f"MLA cache overflow: {end} positions > capacity {self.c_kv.shape[1]}")
        self.c_kv[:, self.length : end] = c_kv
        self.k_rope[:, self.length : end] = k_rope
        self.length = end
        return self.c_kv[:, :end], self.k_rope[:, :end], torch.arange(end, device=c_kv.device)


class _RMS(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class MLAOptions(BaseModel):
    """Multi-head Latent Attention dims (DeepSeek-V2 §2.1); None derives from head_dim."""

    model_config = ConfigDict(extra="forbid")
    kv_lora_rank: int | None = Field(
        None, ge=1, description="latent width of the joint KV compression; default 4*head_dim"
    )
    q_lora_rank: int | None = Field(
        None, ge=1, description="latent width of the query compression; None = full-rank query"
    )
    qk_rope_head_dim: int | None = Field(None, ge=0, description="decoupled rotary dims per head; default head_dim/2")
    qk_nope_head_dim: int | None = Field(None, ge=1, description="non-rotary query/key dims per head; default head_dim")
    v_head_dim: int | None = Field(None, ge=1, description="value dims per head; default head_dim")
    kv_norm: bool = Field(True, description="RMSNorm on the compressed latents, as in DeepSeek-V2")


@ATTN.register(
    "mla",
    tags=("latent", "low-rank", "compressed-cache"),
    caps={"remote_code": True, "kv_cache": True, "short": "MLA", "left_pad": True},
    paper="DeepSeek-AI 2024 (DeepSeek-V2), arXiv:2405.04434",
    options=MLAOptions,
)
class MLA(nn.Module):
    """Low-rank joint KV compression, optional low-rank query, decoupled RoPE; no biases (as in DeepSeek-V2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = mla_dims(cfg)
        self.n_head, self.kv_rank, self.q_rank = cfg.n_head, d["kv_rank"], d["q_rank"]
        self.rope, self.nope, self.v_dim = d["rope"], d["nope"], d["v"]
        self.window, self.dropout = cfg.window, cfg.dropout
        qk = self.nope + self.rope
        self.scale = 1.0 / math.sqrt(qk)
        if self.q_rank:
            self.wq_a = nn.Linear(cfg.d_model, self.q_rank, bias=False)  # W_DQ (eq. 12)
            self.q_norm = _RMS(self.q_rank, cfg.norm_eps)
            self.wq_b = nn.Linear(self.q_rank, self.n_head * qk, bias=False)  # W_UQ and W_QR
        else:
            self.wq = nn.Linear(cfg.d_model, self.n_head * qk, bias=False)
        self.wkv_a = nn.Linear(cfg.d_model, self.kv_rank + self.rope, bias=False)  # W_DKV and W_KR
        self.kv_norm = _RMS(self.kv_rank, cfg.norm_eps) if cfg.mla.kv_norm else nn.Identity()
        self.wkv_b = nn.Linear(self.kv_rank, self.n_head * (self.nope + self.v_dim), bias=False)  # W_UK, W_UV
        self.proj = nn.Linear(self.n_head * self.v_dim, cfg.d_model, bias=False)
        self.proj.residual_projection = True

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        """RoPE needs rotary dims to act on."""
        if cfg.pos == "rope" and mla_dims(cfg)["rope"] == 0:
            raise ValueError(
                "model.mla.qk_rope_head_dim: 0 leaves RoPE nothing to rotate; allowed: >= 2 with pos='rope'"
            )
        if mla_dims(cfg)["rope"] % 2:
            raise ValueError("model.mla.qk_rope_head_dim: must be even (rotary pairs)")

    def _queries(self, x: Tensor, pos: PosContext) -> tuple[Tensor, Tensor]:
        B, T, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_rank else self.wq(x)
        q = q.view(B, T, self.n_head, self.nope + self.rope).transpose(1, 2)  # (B, nh, T, nope+rope)
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        return q_nope, pos.rotate_all(q_rope)

    def _latents(self, x: Tensor, pos: PosContext) -> tuple[Tensor, Tensor]:
        c_kv, k_rope = self.wkv_a(x).split([self.kv_rank, self.rope], dim=-1)
        return self.kv_norm(c_kv), pos.rotate_all(k_rope)  # (B, T, r), (B, T, rope)

    def forward(self, x: Tensor, *, pos: PosContext, cache: LatentCache | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); absorbed form when decoding from a cache without gradients."""
        B, T, _ = x.shape
        q_nope, q_rope = self._queries(x, pos)
        c_kv, k_rope = self._latents(x, pos)
        k_first = None
        if cache is not None:
            k_first = cache.first_position
            c_kv, k_rope, k_pos = cache.update(c_kv, k_rope)
        else:
            k_pos = pos.q_pos
        mask, is_causal = attention_mask(pos, k_pos, self.window, x.dtype, k_first)
        if cache is not None and not torch.is_grad_enabled():
            y = self.attend_absorbed(q_nope, q_rope, c_kv, k_rope, mask, is_causal)
        else:
            y = self.attend_naive(q_nope, q_rope, c_kv, k_rope, mask, is_causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.v_dim))

    def attend_naive(self, q_nope, q_rope, c_kv, k_rope, mask, is_causal) -> Tensor:
        """Expand latents to per-head keys [k_nope, k_rope] and values, then standard attention."""
        B, Tk, _ = c_kv.shape
        kv = self.wkv_b(c_kv).view(B, Tk, self.n_head, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)  # (B, nh, Tk, nope), (B, nh, Tk, v)
        k = torch.cat([k_nope, k_rope[:, None].expand(-1, self.n_head, -1, -1)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            scale=self.scale,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, T, v)

    def attend_absorbed(self, q_nope, q_rope, c_kv, k_rope, mask, is_causal) -> Tensor:
        """Attend in latent space: q_nope W_UK against c_kv, then W_UV on the latent output."""
        w = self.wkv_b.weight.view(self.n_head, self.nope + self.v_dim, self.kv_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]  # (nh, nope, r), (nh, v, r)
        q_lat = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)  # (B, nh, T, r)
        scores = torch.einsum("bhtr,bsr->bhts", q_lat, c_kv) + torch.einsum("bhtd,bsd->bhts", q_rope, k_rope)
        scores = masked_scores(scores * self.scale, mask, is_causal)
        probs = F.softmax(scores.float(), dim=-1).to(c_kv.dtype)
        out_lat = torch.einsum("bhts,bsr->bhtr", probs, c_kv)  # (B, nh, T, r)
        return torch.einsum("bhtr,hvr->bhtv", out_lat, w_uv)

    def new_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> LatentCache:
        """A latent cache: kv_lora_rank + qk_rope_head_dim values per token."""
        return LatentCache(batch, max_len, self.kv_rank, self.rope, device, dtype)

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Forward FLOPs of the naive (training) form per token."""
        d, H, D = mla_dims(cfg), cfg.n_head, cfg.d_model
        qk = d["nope"] + d["rope"]
        q = 2 * D * d["q_rank"] + 2 * d["q_rank"] * H * qk if d["q_rank"] else 2 * D * H * qk
        proj = q + 2 * D * (d["kv_rank"] + d["rope"]) + 2 * d["kv_rank"] * H * (d["nope"] + d["v"]) + 2 * H * d["v"] * D
        return {"attn_proj": proj, "attn_scores": 2 * seq_len * H * (qk + d["v"])}

    @classmethod
    def rotated_per_token(cls, cfg: ModelConfig) -> int:
        """Every head's decoupled rope query and the one shared rope key."""
        return (cfg.n_head + 1) * mla_dims(cfg)["rope"]

    @classmethod
    def norm_flops_per_token(cls, cfg: ModelConfig) -> int:
        """RMSNorm of the latents (4 FLOPs per feature, as the model's own RMSNorm)."""
        d = mla_dims(cfg)
        return 4 * ((d["kv_rank"] if cfg.mla.kv_norm else 0) + (d["q_rank"] or 0))

    @classmethod
    def kv_bytes_per_token(cls, cfg: ModelConfig, bytes_per_value: int = 2) -> int:
        """The latent and the shared rope key, per layer."""
        d = mla_dims(cfg)
        return cfg.n_layer * (d["kv_rank"] + d["rope"]) * bytes_per_value
