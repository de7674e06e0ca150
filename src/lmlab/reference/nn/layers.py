"""Layers with explicit forward and backward passes.

Every layer keeps what its backward needs from the last forward, returns the gradient with
respect to its input from `backward(dout)`, and *adds* parameter gradients into `self.grads`
(so a layer used twice accumulates, as autograd would). Shapes: activations (..., d).
"""

from __future__ import annotations

import math

import numpy as np

DTYPE = np.float32


class Module:
    """Parameters and gradients in dicts; children are found by attribute, so names read like torch's."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def add_param(self, name: str, value: np.ndarray) -> None:
        """Register a parameter and its zeroed gradient."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def children(self) -> dict[str, Module]:
        """Direct sub-modules, including those in lists (named `name.i`)."""
        out: dict[str, Module] = {}
        for name, value in vars(self).items():
            if isinstance(value, Module):
                out[name] = value
            elif isinstance(value, list):
                out.update({f"{name}.{i}": v for i, v in enumerate(value) if isinstance(v, Module)})
        return out

    def parameters(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Every parameter, by dotted name (the arrays themselves: optimisers update them in place)."""
        out = {prefix + k: v for k, v in self.params.items()}
        for name, child in self.children().items():
            out.update(child.parameters(f"{prefix}{name}."))
        return out

    def gradients(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Every parameter's gradient, by the same names."""
        out = {prefix + k: v for k, v in self.grads.items()}
        for name, child in self.children().items():
            out.update(child.gradients(f"{prefix}{name}."))
        return out

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        for g in self.gradients().values():
            g[...] = 0

    def load(self, params: dict[str, np.ndarray]) -> None:
        """Copy values into the parameters of the same names; a missing or misshapen one is an error."""
        own = self.parameters()
        missing = sorted(set(own) - set(params))
        if missing:
            raise KeyError(f"missing parameters: {', '.join(missing[:5])}")
        for name, p in own.items():
            value = np.asarray(params[name])
            if value.shape != p.shape:
                raise ValueError(f"{name}: shape {value.shape}, expected {p.shape}")
            p[...] = value

    def astype(self, dtype: type) -> Module:
        """Cast every parameter (and gradient) to `dtype`, e.g. float64 for gradient checks."""
        for m in [self, *self._descendants()]:
            m.params = {k: v.astype(dtype) for k, v in m.params.items()}
            m.grads = {k: np.zeros_like(v) for k, v in m.params.items()}
        return self

    def _descendants(self) -> list[Module]:
        out = []
        for child in self.children().values():
            out += [child, *child._descendants()]
        return out


class Embedding(Module):
    """Row lookup; the backward scatter-adds each output gradient into the row it came from."""

    def __init__(self, num: int, dim: int, rng: np.random.Generator, std: float = 0.02) -> None:
        super().__init__()
        self.add_param("weight", (rng.standard_normal((num, dim)) * std).astype(DTYPE))

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """(...,) int ids -> (..., dim)."""
        self.ids = ids
        return self.params["weight"][ids]

    def backward(self, dout: np.ndarray) -> None:
        """Rows repeated in the batch receive the sum of their gradients (np.add.at, not fancy assignment)."""
        np.add.at(self.grads["weight"], self.ids.reshape(-1), dout.reshape(-1, dout.shape[-1]))


class Linear(Module):
    """y = x W + b with W of shape (in, out) (torch stores its transpose)."""

    def __init__(
        self, d_in: int, d_out: int, rng: np.random.Generator, *, bias: bool = True, std: float = 0.02
    ) -> None:
        super().__init__()
        self.add_param("weight", (rng.standard_normal((d_in, d_out)) * std).astype(DTYPE))
        if bias:
            self.add_param("bias", np.zeros(d_out, dtype=DTYPE))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(..., in) -> (..., out)."""
        self.x = x
        y = x @ self.params["weight"]
        return y + self.params["bias"] if "bias" in self.params else y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dW = x^T dout summed over every leading axis; db = sum of dout; dx = dout W^T."""
        x2 = self.x.reshape(-1, self.x.shape[-1])
        d2 = dout.reshape(-1, dout.shape[-1])
        self.grads["weight"] += x2.T @ d2
        if "bias" in self.params:
            self.grads["bias"] += d2.sum(axis=0)
        return dout @ self.params["weight"].T


_GELU_C = math.sqrt(2.0 / math.pi)


class GELU(Module):
    """The tanh approximation of GELU (Hendrycks & Gimpel 2016), as in GPT-2."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """0.5 x (1 + tanh(c (x + 0.044715 x^3)))."""
        self.x = x
        self.t = np.tanh(_GELU_C * (x + 0.044715 * x**3))
        return 0.5 * x * (1.0 + self.t)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Product rule through x and the tanh."""
        x, t = self.x, self.t
        dt = (1.0 - t**2) * _GELU_C * (1.0 + 3 * 0.044715 * x**2)
        return dout * (0.5 * (1.0 + t) + 0.5 * x * dt)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: the row maximum is subtracted before exponentiating."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(y: np.ndarray, dy: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jacobian-vector product of softmax: y * (dy - sum(dy * y))."""
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) * gain + bias over the last axis (biased variance, as torch)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.add_param("weight", np.ones(dim, dtype=DTYPE))
        self.add_param("bias", np.zeros(dim, dtype=DTYPE))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalise each vector of the last axis."""
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        self.inv_std = 1.0 / np.sqrt(var + self.eps)
        self.xhat = (x - mu) * self.inv_std
        return self.xhat * self.params["weight"] + self.params["bias"]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dx = inv_std / N * (N dxhat - sum(dxhat) - xhat sum(dxhat xhat))."""
        xhat, n = self.xhat, self.xhat.shape[-1]
        lead = tuple(range(dout.ndim - 1))
        self.grads["weight"] += (dout * xhat).sum(axis=lead)
        self.grads["bias"] += dout.sum(axis=lead)
        dxhat = dout * self.params["weight"]
        return (
            self.inv_std
            / n
            * (n * dxhat - dxhat.sum(axis=-1, keepdims=True) - xhat * (dxhat * xhat).sum(axis=-1, keepdims=True))
        )


def sinusoidal_positions(T: int, d: int, dtype: type = DTYPE) -> np.ndarray:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)) (Vaswani et al. 2017, §3.5)."""
    div = np.exp(np.arange(0, d, 2, dtype=np.float64) * (-math.log(10000.0) / d))
    angles = np.arange(T, dtype=np.float64)[:, None] * div[None, :]
    pe = np.zeros((T, d), dtype=np.float64)
    pe[:, 0::2] = np.sin(angles)
    pe[:, 1::2] = np.cos(angles[:, : d // 2])
    return pe.astype(dtype)
