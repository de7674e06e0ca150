"""SGD with (Nesterov) momentum: the baseline every adaptive method is measured against."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from lmlab.config import TrainConfig
from lmlab.optim.groups import param_groups
from lmlab.registry import OPTIM


class SGDOptions(BaseModel):
    """train.sgd.*"""

    model_config = ConfigDict(extra="forbid")

    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0)")

    @model_validator(mode="after")
    def _check(self) -> SGDOptions:
        if self.nesterov and self.momentum == 0:
            raise ValueError("train.sgd.nesterov: needs momentum > 0; allowed: nesterov false, or momentum in (0, 1)")
        return self


@OPTIM.register("sgd", options=SGDOptions, paper="https://proceedings.mlr.press/v28/sutskever13.html")
class SGD:
    """torch.optim.SGD; L2 weight decay on matrices (coupled, as torch's SGD applies it)."""

    @staticmethod
    def build(model: nn.Module, train: TrainConfig, options: SGDOptions) -> torch.optim.Optimizer:
        """torch.optim.SGD over the decaying and non-decaying groups."""
        groups = param_groups(model, train.weight_decay, decay_embeddings=train.decay_embeddings)
        return torch.optim.SGD(groups, lr=train.lr, momentum=options.momentum, nesterov=options.nesterov)
