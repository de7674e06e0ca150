"""AdamW from plain numbers, and the switch to its fused kernel on GPUs (the optimizers themselves are in optim/)."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import TrainConfig
from lmlab.optim.groups import build_optimizer


def configure_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW whose first group (params with >= 2 dims) decays and second group does not: the `adamw`
    optimizer block, for callers that hold numbers rather than a TrainConfig."""
    train = TrainConfig(optim="adamw", lr=lr, weight_decay=weight_decay, beta1=betas[0], beta2=betas[1])
    return build_optimizer(model, train)


def fused_applies(optimizer: torch.optim.Optimizer, setting: str = "auto") -> bool:
    """Whether `setting` (auto | on | off) turns on the fused kernel: auto when every parameter is a
    floating CUDA tensor; on wherever torch has one (CUDA and CPU); never for optimizers without one."""
    if setting == "off" or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return False
    if setting == "on":
        return True
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return bool(params) and all(p.is_cuda and torch.is_floating_point(p) for p in params)


def use_fused(optimizer: torch.optim.Optimizer, setting: str = "auto") -> bool:
    """Switch an Adam/AdamW to its fused kernel once its parameters sit on their device; whether it did.
    (A hyperparameter of each group, as torch reads it at every step.)"""
    if not fused_applies(optimizer, setting):
        return False
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    optimizer.defaults["fused"] = True
    return True
