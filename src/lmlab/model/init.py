"""Weight initialisation shared by every model lmlab builds."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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


class NoRandomInit(TorchFunctionMode):
    """Random initialisers become no-ops: a meta tensor holds no values, and its `normal_` runs a Python
    decomposition that imports the whole compiler stack (seconds of every command's start)."""

    SKIPPED = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.nn.init.normal_, torch.nn.init.uniform_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))
