"""SwiGLU feed-forward (Shazeer, 2020, "GLU Variants Improve Transformer", eq. 6), as in LLaMA."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.nn import functional as F

from lmlab.config import ModelConfig
from lmlab.ffn.gated_mlp import GatedMLP
from lmlab.registry import FFN


@FFN.register(
    "swiglu",
    tags=("gated",),
    caps={"remote_code": True, "d_ff_mult": 8 / 3, "short": "SwiGLU"},
    paper="Shazeer 2020, arXiv:2002.05202",
)
class SwiGLU(GatedMLP):
    """down(silu(gate(x)) * up(x)), whatever `model.activation` says."""

    def gate_activation(self, cfg: ModelConfig) -> Callable[[Tensor], Tensor]:
        """Swish (SiLU) on the gate."""
        return F.silu
