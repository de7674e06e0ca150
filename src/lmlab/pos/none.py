"""No positional information (NoPE): causal masking alone orders the tokens (Haviv et al., 2022)."""

from lmlab.pos.base import PositionScheme
from lmlab.registry import POS


@POS.register(
    "none",
    tags=("relative",),
    caps={"remote_code": True, "short": "NoPE", "seq2seq": True},
    paper="Haviv et al. 2022, arXiv:2203.16634",
)
class NoPositions(PositionScheme):
    """Adds nothing; attention sees only token content and the causal mask."""
