"""Learning-rate schedules as multipliers of the base learning rate."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(step: int, *, warmup: int, decay_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, cosine decay to `min_ratio` at `decay_steps`, then flat (nanoGPT's get_lr)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup) / max(1, decay_steps - warmup)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


class WarmupCosine:
    """Picklable multiplier for LambdaLR (a lambda would not survive a weights-only checkpoint)."""

    def __init__(self, warmup: int, decay_steps: int, min_ratio: float) -> None:
        self.warmup, self.decay_steps, self.min_ratio = warmup, decay_steps, min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, warmup=self.warmup, decay_steps=self.decay_steps, min_ratio=self.min_ratio)


def warmup_cosine_scheduler(optimizer: Optimizer, *, warmup: int, decay_steps: int, min_ratio: float) -> LambdaLR:
    """A LambdaLR following `warmup_cosine`."""
    return LambdaLR(optimizer, WarmupCosine(warmup, decay_steps, min_ratio))
