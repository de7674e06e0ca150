"""Weight initialisation shared by every model lmlab builds."""

from __future__ import annotations

import math

from torch import nn

from lmlab.config import ModelConfig


def init_weights(module: nn.Module, cfg: ModelConfig, embeddings: tuple[nn.Module, ...] = ()) -> None:
    """GPT-2 init: N(0, init_std); residual projections scaled by 1/sqrt(2 n_layer) (GPT-2 §2.3)."""
    std = cfg.init_std
    if isinstance(module, nn.Linear):
        scale = 1 / math.sqrt(2 * cfg.n_layer) if getattr(module, "residual_projection", False) else 1.0
        nn.init.normal_(module.weight, mean=0.0, std=std * scale)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding) or any(module is e for e in embeddings):
        nn.init.normal_(module.weight, mean=0.0, std=std)
