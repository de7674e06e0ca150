"""Adafactor (Shazeer & Stern, 2018): factored second moments, no first moment; torch's implementation."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lmlab.config import TrainConfig
from lmlab.optim.groups import param_groups
from lmlab.registry import OPTIM


class AdafactorOptions(BaseModel):
    """train.adafactor.*"""

    model_config = ConfigDict(extra="forbid")

    beta2_decay: float = Field(-0.8, le=0, description="second-moment decay exponent: beta2_t = 1 - t^beta2_decay")
    clip_threshold: float = Field(1.0, gt=0, description="update RMS clipping d")
    eps: float = Field(1e-3, gt=0, description="relative-step floor eps2 on the parameter scale")


@OPTIM.register("adafactor", options=AdafactorOptions, paper="https://arxiv.org/abs/1804.04235", tags=("adaptive",))
class Adafactor:
    """torch.optim.Adafactor with train.lr as its (absolute) step size."""

    @staticmethod
    def build(model: nn.Module, train: TrainConfig, options: AdafactorOptions) -> torch.optim.Optimizer:
        """torch.optim.Adafactor over the decaying and non-decaying groups."""
        groups = param_groups(model, train.weight_decay, decay_embeddings=train.decay_embeddings)
        return torch.optim.Adafactor(
            groups, lr=train.lr, beta2_decay=options.beta2_decay, d=options.clip_threshold, eps=(None, options.eps)
        )
