"""Tokenizers, corpora and batch loaders."""

from __future__ import annotations

from lmlab.utils.lazy import lazy_getattr

_EXPORTS = {"TextDataset": "lmlab.data.module", "TextDataModule": "lmlab.data.module"}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
