"""Which keys a query may not see. Masks are boolean with True = blocked; attention adds MASK_VALUE there."""

from __future__ import annotations

import numpy as np

# Large and finite: a blocked score underflows to exactly 0 after softmax without inf - inf = nan.
MASK_VALUE = -1e9


def causal_mask(T: int) -> np.ndarray:
    """(T, T), True strictly above the diagonal: query i may not see keys j > i."""
    return np.triu(np.ones((T, T), dtype=bool), k=1)


def pad_mask(valid: np.ndarray) -> np.ndarray:
    """(B, 1, 1, Tk) from a (B, Tk) validity mask: True on padded keys, for every head and query."""
    return ~valid.astype(bool)[:, None, None, :]


def decoder_mask(valid: np.ndarray) -> np.ndarray:
    """(B, 1, T, T): causal, and never a padded target key."""
    return causal_mask(valid.shape[1])[None, None] | pad_mask(valid)
