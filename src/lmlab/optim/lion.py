"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an
interpolated momentum, so every coordinate moves by exactly lr; one state tensor per parameter."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmlab.config import TrainConfig
from lmlab.optim.groups import GroupStepOptimizer, param_groups
from lmlab.registry import OPTIM


class LionOptions(BaseModel):
    """train.lion.*; the paper's defaults. Its authors use a 3-10x smaller lr and larger decay than AdamW's."""

    model_config = ConfigDict(extra="forbid")

    beta1: float = Field(0.9, ge=0, lt=1, description="interpolation between momentum and gradient for the update")
    beta2: float = Field(0.99, ge=0, lt=1, description="momentum decay")


class LionOptimizer(GroupStepOptimizer):
    """update = sign(beta1*m + (1-beta1)*g); p <- p*(1 - lr*wd) - lr*update; m <- beta2*m + (1-beta2)*g."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    def step_group(self, group: dict) -> None:
        """One Lion step over the group's parameters that have a gradient."""
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            m = state["exp_avg"]
            update = m.lerp(p.grad, 1 - beta1).sign_()
            p.mul_(1 - group["lr"] * group["weight_decay"]).add_(update, alpha=-group["lr"])
            m.lerp_(p.grad, 1 - beta2)


@OPTIM.register("lion", options=LionOptions, paper="https://arxiv.org/abs/2302.06675")
class Lion:
    """Lion over the decaying and non-decaying groups (decoupled decay, as in the paper)."""

    @staticmethod
    def build(model: nn.Module, train: TrainConfig, options: LionOptions) -> torch.optim.Optimizer:
        """LionOptimizer with train.lr and the options' betas."""
        groups = param_groups(model, train.weight_decay, decay_embeddings=train.decay_embeddings, lr=train.lr)
        return LionOptimizer(groups, lr=train.lr, betas=(options.beta1, options.beta2))
