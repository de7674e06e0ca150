"""The training loop, its callbacks, schedules and checkpoints.

`from lmlab.trainer import MiniTrainer, Callback` works; the names load on first use (PEP 562).
"""

from __future__ import annotations

from lmlab.utils.lazy import lazy_getattr

_EXPORTS = {"MiniTrainer": "lmlab.trainer.mini_trainer", "Callback": "lmlab.trainer.callbacks"}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
