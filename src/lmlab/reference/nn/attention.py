"""Masked multi-head attention (Vaswani et al. 2017, eq. 1 and §3.2.2), forward and backward.

Self-attention passes the same array as queries and keys/values; cross-attention passes the
decoder state as queries and the encoder output as keys/values. `blocked` is a boolean mask
broadcastable to (B, h, Tq, Tk), True where a key must not be seen (utils/mask.py).
"""

from __future__ import annotations

import numpy as np

from lmlab.reference.nn.layers import Linear, Module, softmax, softmax_backward
from lmlab.reference.utils.mask import MASK_VALUE


class MultiHeadAttention(Module):
    """softmax(Q K^T / sqrt(d_head) + mask) V per head, heads concatenated and projected."""

    def __init__(self, d_model: int, n_head: int, rng: np.random.Generator) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.h, self.dh = n_head, d_model // n_head
        self.q, self.k, self.v, self.o = (Linear(d_model, d_model, rng) for _ in range(4))

    def _split(self, x: np.ndarray) -> np.ndarray:
        B, T, _ = x.shape
        return x.reshape(B, T, self.h, self.dh).transpose(0, 2, 1, 3)  # (B, h, T, dh)

    def _merge(self, x: np.ndarray) -> np.ndarray:
        B, _, T, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, self.h * self.dh)

    def forward(self, x_q: np.ndarray, x_kv: np.ndarray, blocked: np.ndarray | None = None) -> np.ndarray:
        """(B, Tq, d) queries attend over (B, Tk, d) keys/values -> (B, Tq, d)."""
        Q, K, V = self._split(self.q.forward(x_q)), self._split(self.k.forward(x_kv)), self._split(self.v.forward(x_kv))
        scores = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(self.dh)  # (B, h, Tq, Tk)
        if blocked is not None:
            scores = np.where(blocked, MASK_VALUE, scores).astype(Q.dtype)
        self.attn = softmax(scores, axis=-1)  # kept: the backward needs it, tests read it
        self.Q, self.K, self.V = Q, K, V
        return self.o.forward(self._merge(self.attn @ V))

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradients with respect to the query input and the key/value input (add them for self-attention)."""
        d_ctx = self._split(self.o.backward(dout))  # (B, h, Tq, dh)
        d_attn = d_ctx @ self.V.transpose(0, 1, 3, 2)
        dV = self.attn.transpose(0, 1, 3, 2) @ d_ctx
        d_scores = softmax_backward(self.attn, d_attn) / np.sqrt(self.dh)  # blocked entries: attn = 0 -> 0
        dQ = d_scores @ self.K
        dK = d_scores.transpose(0, 1, 3, 2) @ self.Q
        dx_q = self.q.backward(self._merge(dQ))
        dx_kv = self.k.backward(self._merge(dK)) + self.v.backward(self._merge(dV))
        return dx_q, dx_kv
