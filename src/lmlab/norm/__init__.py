"""Normalisation layers, registered in `lmlab.registry.NORM`."""

from lmlab.norm.layernorm import LayerNorm, LayerNormNoBias
from lmlab.norm.rmsnorm import RMSNorm

__all__ = ["LayerNorm", "LayerNormNoBias", "RMSNorm"]
