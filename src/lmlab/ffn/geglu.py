"""GEGLU feed-forward (Shazeer, 2020, eq. 5): a GELU-gated linear unit, as in T5 v1.1 and Gemma."""

from __future__ import annotations

from lmlab.config import ModelConfig
from lmlab.ffn.gated_mlp import GatedMLP
from lmlab.registry import FFN


@FFN.register(
    "geglu",
    tags=("gated",),
    caps={"remote_code": True, "hf_layout": "gated", "d_ff_mult": 8 / 3, "short": "GeGLU"},
    paper="Shazeer 2020, arXiv:2002.05202",
)
class GeGLU(GatedMLP):
    """down(gelu(gate(x)) * up(x)); `activation: gelu_tanh` selects the tanh approximation (Gemma)."""

    @classmethod
    def gate_activation(cls, cfg: ModelConfig) -> str:
        """GELU on the gate (exact, or tanh when asked)."""
        return "gelu_tanh" if cfg.activation == "gelu_tanh" else "gelu"
