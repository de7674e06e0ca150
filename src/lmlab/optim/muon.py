"""Muon (Jordan et al., 2024; the modded-nanogpt speedrun's optimizer): SGD momentum whose update for
each hidden matrix is orthogonalised by a Newton-Schulz iteration; embeddings, the output head, norms
and biases take AdamW steps, as its authors do."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmlab.config import TrainConfig
from lmlab.optim.groups import GroupStepOptimizer, hidden_matrices, param_groups
from lmlab.registry import OPTIM

# The quintic's coefficients from the speedrun: they push every singular value into about [0.7, 1.2]
# in five steps, faster than the cubic that converges to exactly 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


class MuonOptions(BaseModel):
    """train.muon.*; the AdamW part uses train.lr, train.beta1/beta2 and train.weight_decay."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(0.02, gt=0, description="peak step size of the orthogonalised matrices (scheduled like train.lr)")
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(5, ge=1, description="Newton-Schulz iterations")
    weight_decay: float = Field(0.0, ge=0, description="decoupled decay of the hidden matrices")


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with g's singular vectors (U V^T of g's SVD), batched over
    leading dimensions: X <- aX + (bA + cA^2)X with A = X X^T, on the wide orientation."""
    a, b, c = NS_COEFFS
    x = g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class MuonOptimizer(GroupStepOptimizer):
    """Groups with `use_muon` take Muon steps; the others AdamW steps (written out here, so one
    optimizer holds both states and checkpoints and resumes as one)."""

    shardable = False  # Newton-Schulz needs each whole matrix: not FSDP's shards, and ZeRO-1 is untested

    def __init__(self, groups: list[dict]):
        super().__init__(groups, {})

    def step_group(self, group: dict) -> None:
        """A Muon step for the blocks' matrices, an AdamW step for the others."""
        (self._muon if group["use_muon"] else self._adamw)(group)

    def _muon(self, group: dict) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(p.grad)
            update = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
            update = newton_schulz(update, group["ns_steps"])
            # Equal RMS per step whatever the aspect ratio (Keller Jordan's scaling).
            scale = math.sqrt(max(1.0, p.size(-2) / p.size(-1)))
            p.mul_(1 - group["lr"] * group["weight_decay"]).add_(update, alpha=-group["lr"] * scale)

    def _adamw(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            m, v = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - group["lr"] * group["weight_decay"])
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
            p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))


@OPTIM.register("muon", options=MuonOptions, paper="https://kellerjordan.github.io/posts/muon/")
class Muon:
    """Muon for the blocks' matrices, AdamW (train.lr, betas, weight_decay) for the rest."""

    @staticmethod
    def build(model: nn.Module, train: TrainConfig, options: MuonOptions) -> torch.optim.Optimizer:
        """MuonOptimizer: one Muon group, an AdamW group with decay and one without."""
        hidden = hidden_matrices(model)
        adam = {"use_muon": False, "lr": train.lr, "betas": (train.beta1, train.beta2), "eps": 1e-8}
        rest = param_groups(model, train.weight_decay, decay_embeddings=train.decay_embeddings, skip=hidden)
        muon = {"use_muon": True, "lr": options.lr, "momentum": options.momentum, "nesterov": options.nesterov}
        muon |= {"ns_steps": options.ns_steps, "weight_decay": options.weight_decay}
        return MuonOptimizer([{**muon, "params": hidden}, *({**adam, **g} for g in rest)])
