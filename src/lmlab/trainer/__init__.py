"""The training loop, its callbacks, schedules and checkpoints.

`from lmlab.trainer import MiniTrainer, Callback` works; the names load on first use (PEP 562).
"""

from __future__ import annotations

_EXPORTS = {"MiniTrainer": "lmlab.trainer.mini_trainer", "Callback": "lmlab.trainer.callbacks"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmlab.trainer' has no attribute {name!r}")
