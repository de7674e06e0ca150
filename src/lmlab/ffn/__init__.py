"""Feed-forward blocks, registered in `lmlab.registry.FFN`."""

from lmlab.ffn.mlp import MLP
from lmlab.ffn.swiglu import SwiGLU

__all__ = ["MLP", "SwiGLU"]
