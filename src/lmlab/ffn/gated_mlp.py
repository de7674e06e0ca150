"""Gated linear unit feed-forward (Dauphin et al. 2017; Shazeer 2020, eqs. 5-6) with any activation."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from lmlab.config import ModelConfig
from lmlab.ffn.activations import activation
from lmlab.registry import FFN


@FFN.register(
    "gated_mlp",
    tags=("gated",),
    caps={"remote_code": True, "hf_layout": "gated", "d_ff_mult": 8 / 3, "short": "Gated{act}"},
    paper="Shazeer 2020, arXiv:2002.05202",
)
class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with `model.activation`; 8/3 d_model keeps a 4x MLP's parameters."""

    aux_loss: Tensor | None = None  # no auxiliary loss (MoE sets one after each forward)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.ffn_bias)
        self.down.residual_projection = True
        self.act: Callable[[Tensor], Tensor] = activation(self.gate_activation(cfg))

    @classmethod
    def gate_activation(cls, cfg: ModelConfig) -> str:
        """The name of the nonlinearity on the gate path (`model.activation` here)."""
        return cfg.activation

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.down(self.act(self.gate(x)) * self.up(x))

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Three matmuls of d_model x d_ff."""
        return {"ffn": 3 * 2 * cfg.d_model * cfg.d_ff}
