"""SwiGLU feed-forward (Shazeer, 2020, "GLU Variants Improve Transformer", eq. 6), as in LLaMA."""

from __future__ import annotations

from lmlab.config import ModelConfig
from lmlab.ffn.gated_mlp import GatedMLP
from lmlab.registry import FFN


@FFN.register(
    "swiglu",
    tags=("gated",),
    caps={"remote_code": True, "hf_layout": "gated", "d_ff_mult": 8 / 3, "short": "SwiGLU"},
    paper="Shazeer 2020, arXiv:2002.05202",
)
class SwiGLU(GatedMLP):
    """down(silu(gate(x)) * up(x)), whatever `model.activation` says."""

    @classmethod
    def gate_activation(cls, cfg: ModelConfig) -> str:
        """Swish (SiLU) on the gate."""
        return "silu"
