"""Feed-forward blocks, registered in `lmlab.registry.FFN`."""

from lmlab.ffn.gated_mlp import GatedMLP
from lmlab.ffn.geglu import GeGLU
from lmlab.ffn.mlp import MLP
from lmlab.ffn.moe import MoE
from lmlab.ffn.swiglu import SwiGLU

__all__ = ["MLP", "GatedMLP", "GeGLU", "MoE", "SwiGLU"]
