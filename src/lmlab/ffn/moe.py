"""Mixture of experts with top-k routing (Shazeer et al. 2017; Switch, Fedus et al. 2021; DeepSeekMoE 2024).

A router scores every expert per token (softmax or sigmoid), each token goes to its top-k experts
and the outputs are mixed by the (optionally renormalised) scores. Dispatch is dropless: tokens are
sorted by expert and every routed token is processed, with no capacity limit. Shared experts see
every token (DeepSeekMoE §3.2). Training adds two auxiliary losses, weighted and exposed as
`aux_loss`: load balancing sum_i f_i P_i with f_i = E/(kT) * tokens routed to i and P_i the mean
router probability of i (DeepSeek-V2 eq. 23; = 1 when balanced), and the router z-loss
mean(logsumexp(logits)^2) (ST-MoE, Zoph et al. 2022, eq. 5).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.config import ModelConfig
from lmlab.registry import FFN


def expert_config(cfg: ModelConfig, width: int) -> ModelConfig:
    """The config an expert FFN is built from: the model's, with its own hidden width."""
    return cfg.model_copy(update={"d_ff": width})


class MoEOptions(BaseModel):
    """Mixture-of-experts FFN settings (Shazeer et al. 2017; Fedus et al. 2021; DeepSeekMoE 2024)."""

    model_config = ConfigDict(extra="forbid")
    n_experts: int = Field(8, ge=1)
    top_k: int = Field(2, ge=1)
    n_shared: int = Field(0, ge=0, description="always-active shared experts (DeepSeekMoE)")
    d_expert: int | None = Field(None, ge=1, description="hidden width of one expert; default d_ff")
    expert: str = Field("swiglu", description="FFN block used for each expert")
    score: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk: bool = Field(True, description="renormalise the top-k weights to sum to 1")
    aux_loss_weight: float = Field(0.01, ge=0, description="load-balancing loss weight")
    z_loss_weight: float = Field(0.001, ge=0, description="router z-loss weight")


@FFN.register(
    "moe",
    tags=("sparse", "routed"),
    caps={"d_ff_mult": 4.0, "short": "MoE{cfg.moe.n_experts}x{cfg.moe.top_k}"},
    paper="Shazeer et al. 2017; Fedus et al. 2021; Dai et al. 2024 (DeepSeekMoE)",
    options=MoEOptions,
)
class MoE(nn.Module):
    """Top-k routed experts (any registered FFN) plus optional shared experts."""

    aux_loss: Tensor | None = None  # set after each training forward: weighted balance + z losses

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.moe
        self.n_experts, self.top_k, self.score, self.norm_topk = m.n_experts, m.top_k, m.score, m.norm_topk
        self.aux_weight, self.z_weight = m.aux_loss_weight, m.z_loss_weight
        width = m.d_expert or cfg.d_ff
        expert_cls = FFN.get(m.expert)
        self.router = nn.Linear(cfg.d_model, m.n_experts, bias=False)
        self.experts = nn.ModuleList(expert_cls(expert_config(cfg, width)) for _ in range(m.n_experts))
        # n shared experts of width w equal one expert of width n*w (their hidden units are disjoint).
        self.shared = expert_cls(expert_config(cfg, m.n_shared * width)) if m.n_shared else None
        self.aux_loss: Tensor | None = None
        self.register_buffer("tokens_per_expert", torch.zeros(m.n_experts, dtype=torch.long), persistent=False)

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        """top_k within n_experts and a non-recursive expert type."""
        m = cfg.moe
        if m.top_k > m.n_experts:
            raise ValueError(f"model.moe.top_k: {m.top_k} exceeds n_experts={m.n_experts}; allowed: 1..{m.n_experts}")
        known = [n for n in FFN.names() if n != "moe"]
        if m.expert.lower() not in known:
            raise ValueError(f"model.moe.expert: unknown expert FFN '{m.expert}'; known: {', '.join(known)}")

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Router logits (N, E), scores (N, E), top-k weights (N, k) and expert ids (N, k)."""
        logits = self.router(x).float()
        scores = F.softmax(logits, dim=-1) if self.score == "softmax" else torch.sigmoid(logits)
        weights, ids = scores.topk(self.top_k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        return logits, scores, weights, ids

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C); sets `aux_loss` (training) and `tokens_per_expert`."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        logits, scores, weights, ids = self.route(x)
        flat = ids.flatten()  # (N*k,)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts)
        token_of = order // self.top_k
        out = torch.zeros_like(x)
        for e, (rows, slots) in enumerate(
            zip(token_of.split(counts.tolist()), order.split(counts.tolist()), strict=True)
        ):
            if len(rows):
                y = self.experts[e](x[rows]) * weights.flatten()[slots, None].to(x.dtype)
                out.index_add_(0, rows, y)
        if self.shared is not None:
            out = out + self.shared(x)
        self.tokens_per_expert = counts.detach()
        self.aux_loss = self.losses(logits, scores, counts) if self.training else None
        return out.view(shape)

    def losses(self, logits: Tensor, scores: Tensor, counts: Tensor) -> Tensor:
        """Weighted load-balancing loss plus router z-loss."""
        n_tokens = logits.shape[0]
        f = counts.float() * self.n_experts / (self.top_k * n_tokens)
        probs = scores / scores.sum(-1, keepdim=True)  # sigmoid scores normalised per token, as in DeepSeek-V3
        balance = (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return self.aux_weight * balance + self.z_weight * z

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Router plus the active experts only (top_k routed + shared)."""
        m = cfg.moe
        width = m.d_expert or cfg.d_ff
        expert = FFN.get(m.expert).flops_per_token(expert_config(cfg, width), seq_len)["ffn"]
        return {"router": 2 * cfg.d_model * m.n_experts, "ffn": (m.top_k + m.n_shared) * expert}

    @classmethod
    def active_params(cls, cfg: ModelConfig, total: int) -> int:
        """Parameters one token uses, from the total of this layer's MoE parameters."""
        m = cfg.moe
        router = cfg.d_model * m.n_experts
        per_expert = (total - router) // (m.n_experts + m.n_shared)
        return router + (m.top_k + m.n_shared) * per_expert
