"""Cross-entropy over the real (non-pad) target positions, with its gradient."""

from __future__ import annotations

import numpy as np

from lmlab.reference.nn.layers import softmax


def cross_entropy_masked(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean of -log p(target) over positions where mask is True -> (loss, dloss/dlogits).

    The gradient of the mean is (softmax - one_hot) / n_real at real positions and 0 at pads.
    """
    _B, _T, _V = logits.shape
    m = mask.astype(logits.dtype)
    n = max(float(m.sum()), 1.0)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    picked = np.take_along_axis(shifted, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    loss = float(((log_z - picked) * m).sum() / n)
    dlogits = softmax(logits, axis=-1)
    np.put_along_axis(
        dlogits,
        targets[..., None].astype(np.int64),
        np.take_along_axis(dlogits, targets[..., None].astype(np.int64), axis=-1) - 1.0,
        axis=-1,
    )
    return loss, (dlogits * (m / n)[..., None]).astype(logits.dtype)
