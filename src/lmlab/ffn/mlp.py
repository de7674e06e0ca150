"""Position-wise two-layer MLP (Vaswani et al., 2017, eq. 2) with a configurable activation."""

from __future__ import annotations

from torch import Tensor, nn

from lmlab.config import ModelConfig
from lmlab.ffn.activations import activation
from lmlab.registry import FFN


@FFN.register(
    "mlp",
    tags=("dense",),
    caps={"remote_code": True, "hf_layout": "mlp", "d_ff_mult": 4.0, "short": "{act}"},
    paper="Vaswani et al. 2017",
)
class MLP(nn.Module):
    """proj(act(fc(x))), hidden width d_ff (4 d_model by default)."""

    aux_loss: Tensor | None = None  # no auxiliary loss (MoE sets one after each forward)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ffn_bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.ffn_bias)
        self.proj.residual_projection = True
        self.act = activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.proj(self.act(self.fc(x)))

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Two matmuls of d_model x d_ff."""
        return {"ffn": 2 * 2 * cfg.d_model * cfg.d_ff}
