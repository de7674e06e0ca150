"""A compiled decode step over static caches (the recipe of gpt-fast): preallocated keys and values, the
position as a device tensor, so every step has the same shapes and one `torch.compile`d graph (a CUDA
graph on CUDA) serves all of them. The prompt is prefilled eagerly through the same caches.

Compiled steps are kept per model, batch size and cache length for the life of the process, so
only the first generation pays the compile time, and it is reported once.
"""

from __future__ import annotations

import sys
import time
import weakref

import torch
from torch import Tensor

from lmlab.attn.base import CausalSelfAttention
from lmlab.attn.kv_cache import StaticKVCache

_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(batch, max_len): decoder}
BACKEND = "inductor"  # the tests' grid uses "aot_eager": the same graph and caches without code generation


def static_blocker(model) -> str | None:
    """Why `model` cannot decode through static caches (one line naming the block), or None when it can."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return f"{type(model).__name__} has no decoder-only block stack"
    for block in blocks:
        if not isinstance(block.attn, CausalSelfAttention):
            return f"{model.config.attn} attention keeps a cache of its own shape"
    from lmlab.utils.hardware import missing_compiler

    return missing_compiler(model.lm_head.weight.device.type)


def compile_mode(device: torch.device) -> str | None:
    """CUDA graphs on CUDA (launch overhead is what a decode step is made of); plain inductor elsewhere."""
    return "reduce-overhead" if device.type == "cuda" and BACKEND == "inductor" else None


class StaticDecoder:
    """Static caches for `batch` rows of up to `max_len` positions and the compiled one-token step."""

    def __init__(self, model, batch: int, max_len: int) -> None:
        p = model.lm_head.weight
        self.model = model
        self.caches = [
            StaticKVCache(batch, b.attn.n_kv_head, max_len, b.attn.head_dim, p.device, p.dtype) for b in model.blocks
        ]
        # Every decoder shares `_step`'s code object, so each model and batch size is one more cache entry.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self.step = torch.compile(self._step, mode=compile_mode(p.device), dynamic=False, backend=BACKEND)
        self.compile_seconds: float | None = None
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=p.device)  # one input, one layout, every step

    def _step(self, token: Tensor, pad: Tensor | None) -> Tensor:
        return self.model(token, cache=self.caches, last_only=True, pad=pad).logits[:, -1].float()

    def prefill(self, ids: Tensor, pad: Tensor | None) -> Tensor:
        """Empty the caches, run the prompt through them eagerly; last-position logits (B, V) in float32."""
        for cache in self.caches:
            cache.reset()
        return self._step(ids, pad)

    def decode(self, token: Tensor, pad: Tensor | None) -> Tensor:
        """One compiled step on (B, 1) new tokens; the first call compiles and reports how long it took."""
        self.token.copy_(token)
        if self.compile_seconds is not None:
            return self.step(self.token, pad)
        t0 = time.perf_counter()
        out = self.step(self.token, pad)
        self.compile_seconds = time.perf_counter() - t0
        print(f"compiled the decode step in {self.compile_seconds:.1f} s (kept for this process)", file=sys.stderr)
        return out


def static_decoder(model, batch: int, max_len: int) -> StaticDecoder | None:
    """The process's compiled decoder for this model and batch size, or None (with a one-line notice on
    stderr naming the block) when the model cannot decode through static caches."""
    reason = static_blocker(model)
    if reason is not None:
        print(f"compile: {reason}; decoding eagerly", file=sys.stderr)
        return None
    per_model = _DECODERS.setdefault(model, {})
    key = (batch, max_len)
    if key not in per_model:
        per_model[key] = StaticDecoder(model, batch, max_len)
    return per_model[key]
