"""muP (Yang et al. 2022, "Tensor Programs V"): width scaling under which a learning rate tuned at a small
width stays optimal at larger ones.

With `model.mup_base_width` set, a model of width d has width multiplier m = d / base. Each parameter's
"infinite" dimensions are those that differ from the same parameter of the model at the base width (the
`set_base_shapes` rule of the `mup` package). Then, for Adam-style optimizers (Table 3 of the paper, as the
package's MuAdam and MuReadout implement it):
- a matrix with two infinite dimensions (the blocks' hidden weights) starts at std / sqrt(m) and learns
  at lr / m;
- any other matrix whose input dimension is infinite (a router) starts at std / sqrt(m), at the same lr;
- the output logits are multiplied by 1 / m (the readout), tied to the embedding or not;
- embeddings, norms and biases keep their init and learning rate.
The head width is kept, so attention keeps its 1 / sqrt(head_dim) scale. At the base width every factor
is 1: the model is the standard one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from lmlab.config import ModelConfig, deep_merge, default_d_ff
from lmlab.errors import ConfigError
from lmlab.optim.groups import hidden_matrices

if TYPE_CHECKING:
    from collections.abc import Iterator


def at_width(cfg: ModelConfig, width: int, field: str = "scale --widths") -> ModelConfig:
    """`cfg` at `width`: the same depth and head width, the heads and the FFN scaled with it."""
    head = cfg.head_dim
    if width % head:
        raise ConfigError(
            f"{field}: {width} is not a multiple of the head width {head}; allowed: multiples of {head} "
            "(the head width is d_model / n_head, or model.head_dim)"
        )
    n_head = width // head
    ratio = cfg.n_head // cfg.n_kv_head
    if n_head % ratio:
        raise ConfigError(
            f"{field}: {width} gives {n_head} heads, not a multiple of {ratio} query heads per key/value head; "
            f"allowed: multiples of {head * ratio}"
        )
    d_ff = None if cfg.d_ff == default_d_ff(cfg) else max(8, 8 * round(cfg.d_ff * width / cfg.d_model / 8))
    update = {"d_model": width, "n_head": n_head, "n_kv_head": n_head // ratio, "head_dim": None, "d_ff": d_ff}
    return ModelConfig.model_validate(deep_merge(cfg.model_dump(mode="json"), update))


def base_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` at its `mup_base_width`: the model whose shapes say which dimensions grow."""
    return at_width(cfg, cfg.mup_base_width, "model.mup_base_width")


def width_mult(cfg: ModelConfig) -> float:
    """d_model / model.mup_base_width; 1 without muP."""
    return cfg.d_model / cfg.mup_base_width if cfg.mup_base_width else 1.0


def infinite_dims(model: nn.Module, base: nn.Module) -> dict[int, tuple[bool, ...]]:
    """For each parameter of `model` (by id), which of its dimensions grow with width: those that differ from
    the same parameter of `base`, the model at `mup_base_width` (shapes only)."""
    shapes = {name: p.shape for name, p in base.named_parameters()}
    out = {}
    for name, p in model.named_parameters():
        if name not in shapes or len(shapes[name]) != p.dim():
            raise ConfigError(f"model.mup_base_width: parameter {name} has no counterpart at the base width")
        out[id(p)] = tuple(a != b for a, b in zip(p.shape, shapes[name], strict=True))
    return out


def _hidden(model: nn.Module, dims: dict[int, tuple[bool, ...]]) -> Iterator[tuple[nn.Parameter, bool]]:
    """(parameter, both dims infinite) for every matrix inside the blocks whose input (last) dimension grows."""
    for p in hidden_matrices(model):
        inf = dims[id(p)]
        if inf[-1]:
            yield p, sum(inf) >= 2


@torch.no_grad()
def apply_mup(model: nn.Module, base: nn.Module) -> None:
    """Scale the standard init of every matrix whose input dimension grows by 1 / sqrt(m), and mark the
    matrices with two growing dimensions `lr_scale = 1 / m`, which the optimizers' groups read; `base` is
    the model at the base width (shapes only)."""
    m = width_mult(model.config)
    for p, both in _hidden(model, infinite_dims(model, base)):
        p.mul_(1 / math.sqrt(m))
        if both:
            p.lr_scale = 1 / m


def logit_mult(cfg: ModelConfig) -> float:
    """The readout's output multiplier, 1 / m."""
    return 1 / width_mult(cfg)
