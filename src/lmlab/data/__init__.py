"""Tokenizers, corpora and batch loaders."""

from __future__ import annotations

_EXPORTS = {"TextDataset": "lmlab.data.module", "TextDataModule": "lmlab.data.module"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so that importing a torch-free helper (lmlab.data.pairs) does not import torch.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmlab.data' has no attribute {name!r}")
