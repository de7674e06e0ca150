"""GEGLU feed-forward (Shazeer, 2020, eq. 5): a GELU-gated linear unit, as in T5 v1.1 and Gemma."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor
from torch.nn import functional as F

from lmlab.config import ModelConfig
from lmlab.ffn.gated_mlp import GatedMLP
from lmlab.registry import FFN


@FFN.register(
    "geglu",
    tags=("gated",),
    caps={"remote_code": True, "d_ff_mult": 8 / 3, "short": "GeGLU"},
    paper="Shazeer 2020, arXiv:2002.05202",
)
class GeGLU(GatedMLP):
    """down(gelu(gate(x)) * up(x)); `activation: gelu_tanh` selects the tanh approximation (Gemma)."""

    def gate_activation(self, cfg: ModelConfig) -> Callable[[Tensor], Tensor]:
        """GELU on the gate (exact, or tanh when asked)."""
        return partial(F.gelu, approximate="tanh") if cfg.activation == "gelu_tanh" else F.gelu
