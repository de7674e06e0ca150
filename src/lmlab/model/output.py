"""What every lmlab model's forward returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ModelOutput:
    """Logits (B, T, V), the mean next-token loss when targets were given, and any auxiliary (MoE) loss."""

    logits: Tensor
    loss: Tensor | None = None
    aux_loss: Tensor | None = None
