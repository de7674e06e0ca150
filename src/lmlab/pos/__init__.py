"""Position schemes: each adds to embeddings and/or hands attention a PosContext."""

from lmlab.pos.alibi import ALiBiPositions
from lmlab.pos.base import PosContext, PositionScheme
from lmlab.pos.learned import LearnedPositions
from lmlab.pos.none import NoPositions
from lmlab.pos.rope import RotaryPositions
from lmlab.pos.sinusoidal import SinusoidalPositions

__all__ = [
    "ALiBiPositions",
    "LearnedPositions",
    "NoPositions",
    "PosContext",
    "PositionScheme",
    "RotaryPositions",
    "SinusoidalPositions",
]
