"""Activation functions by config name (`model.activation`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor
from torch.nn import functional as F

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function called `name` (validated by the config's Literal)."""
    return ACTIVATIONS[name]
