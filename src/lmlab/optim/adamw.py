"""AdamW (Loshchilov & Hutter, 2019): the default; torch's kernel, fused on CUDA (train.fused_adamw)."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.config import TrainConfig
from lmlab.optim.groups import param_groups
from lmlab.registry import OPTIM


@OPTIM.register("adamw", paper="https://arxiv.org/abs/1711.05101", tags=("adaptive",))
class AdamW:
    """Adam with decoupled weight decay: betas train.beta1/beta2, decay on matrices only."""

    @staticmethod
    def build(model: nn.Module, train: TrainConfig, options: None = None) -> torch.optim.Optimizer:
        """torch.optim.AdamW over the decaying and non-decaying groups."""
        groups = param_groups(model, train.weight_decay, decay_embeddings=train.decay_embeddings, lr=train.lr)
        return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2))
