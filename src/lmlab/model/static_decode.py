"""A compiled decode step over static caches (the recipe of gpt-fast): preallocated keys and values, the
position as a device tensor, so every step has the same shapes and one `torch.compile`d graph (a CUDA
graph on CUDA) serves all of them. The prompt is prefilled eagerly through the same caches.

Compiled steps are kept per model, batch size and cache length for the life of the process, so
only the first generation pays the compile time, and it is reported once. Greedy decoding picks the
token inside the compiled step, so a step is one call with no eager work around it.

On CPU a one-token step is made of matrix-vector products far too small for a BLAS call's fixed cost,
so the step is compiled with them as generated loops (inductor's memory-bound mm decomposition) and
attention as explicit math, which inductor fuses. A step's second call is recorded, and later calls
replay its kernels on the same buffers (`kernel_replay`, the CPU counterpart of a CUDA graph): at 4L/128D
this halves a step, most of which was Dynamo's entry and inductor's wrapper allocating its buffers.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import time
import weakref

import torch
from torch import Tensor

from lmlab.attn.base import CausalSelfAttention
from lmlab.attn.kv_cache import StaticKVCache
from lmlab.model.kernel_replay import KernelReplay, WholeState, capture

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


def _mm_limits(rows: int) -> dict[str, int]:
    """The largest (rows, K) x (K, N) products that a CPU step computes as generated loops."""
    return {"cpu_max_first_dimension_decomposition": rows, "cpu_max_other_dimension_decomposition": 4096}


# Up to this many token rows, loops over the weight's rows beat BLAS on CPU (2 cores, widths 128 and 384).
STATIONARY_ROWS = 16


@functools.cache
def weight_stationary_pass() -> object | None:
    """An inductor graph pass (None where this torch lacks the hooks) that computes each CPU product of 2 to
    `STATIONARY_ROWS` token rows, (M, K) x (K, N), whose weight is larger than a core's L2 cache, as loops
    over the weight's rows: out.T[n] = W[n] . x[m] for every m, so each weight row is read once for all M
    token rows, where inductor's own decomposition reads the whole weight once per token row. A batch step
    or a speculative pass is otherwise M one-token steps of memory traffic (6L/384D: a 5-token pass takes
    2.4 ms instead of 3.1 ms). One-row products, and weights that stay in the cache, are left to inductor's
    decomposition, which is faster for them."""
    try:
        from torch._dynamo.utils import counters
        from torch._inductor.custom_graph_pass import CustomGraphPass
        from torch._inductor.pattern_matcher import Arg, CallFunction, PatternMatcherPass, register_graph_pattern
    except ImportError:
        return None
    from lmlab.utils.hardware import cpu_l2_bytes

    aten, patterns, l2 = torch.ops.aten, PatternMatcherPass(), cpu_l2_bytes()

    def rewrite(match, a, b, bias=None) -> None:
        if not _stationary_fits(a.meta.get("val"), b.meta.get("val"), l2):
            return
        counters["lmlab"]["weight_stationary_mm"] += 1
        if bias is None:
            match.replace_by_example(_by_weight_rows, [a, b])
        else:
            match.replace_by_example(lambda bias, a, b: _by_weight_rows(a, b) + bias, [bias, a, b])
        a.meta["inductor_realize_to_strides"] = True  # computed once, not again in every weight row's loop

    @register_graph_pattern(CallFunction(aten.mm, Arg(), Arg()), pass_dict=patterns)
    def _mm(match, a, b) -> None:
        rewrite(match, a, b)

    @register_graph_pattern(CallFunction(aten.addmm, Arg(), Arg(), Arg()), pass_dict=patterns)
    def _addmm(match, bias, a, b) -> None:
        rewrite(match, a, b, bias)

    class WeightStationary(CustomGraphPass):
        def __call__(self, graph) -> None:
            patterns.apply(graph)

        def uuid(self) -> str:  # inductor's on-disk cache keys on it
            return f"lmlab-weight-stationary-{STATIONARY_ROWS}-{l2}-1"

    return WeightStationary()


def _stationary_fits(a, b, l2: int) -> bool:
    """Whether `weight_stationary_pass` rewrites a CPU product of `a` (M, K) with `b` (K, N)."""
    return (
        isinstance(a, Tensor)
        and isinstance(b, Tensor)
        and a.device.type == b.device.type == "cpu"
        and a.dim() == b.dim() == 2
        and 1 < a.shape[0] <= STATIONARY_ROWS
        and max(b.shape) <= _mm_limits(STATIONARY_ROWS)["cpu_max_other_dimension_decomposition"]
        and b.numel() * b.element_size() > l2  # a weight in the core's cache costs little to read again
    )


def _by_weight_rows(a: Tensor, b: Tensor) -> Tensor:
    """a @ b computed as (b.T's rows . a's rows).T: loops over the weight's rows, each read once."""
    # copied back to (M, N): the ops that follow keep their row-major loops (read through the transpose,
    # inductor re-tiled them, and a step got slower than without the pass)
    return (b.t()[:, None, :] * a[None, :, :]).sum(-1).t().contiguous()


def compile_options(device: torch.device, batch: int) -> dict | None:
    """Inductor options for a CPU step: products of several token rows by `weight_stationary_pass`, the
    memory-bound mm decomposition for one-row products, with `_mm_limits`."""
    if device.type != "cpu" or BACKEND != "inductor":
        return None
    # The pass ignores keys it does not know, but inductor's on-disk cache keys on them: steps compiled
    # before `_decomposition_limits` held the limits (their products left to BLAS) are never read back.
    limits = {**_mm_limits(batch), "lmlab_limits_held": True}
    # The step's inputs are its own fixed buffers and the model's parameters: no per-call shape checks.
    options = {"post_grad_fusion_options": {"decompose_mm_pass": limits}, "size_asserts": False}
    rows_pass = weight_stationary_pass()
    return options if rows_pass is None else {**options, "post_grad_custom_pre_pass": rows_pass}


@contextlib.contextmanager
def _decomposition_limits(device: torch.device, rows: int):
    """While a CPU step of `rows` token rows compiles, hold `_mm_limits(rows)` where inductor reads them: its
    decomposition pass takes the limits from module globals fixed at import, so the options above only switch
    the pass on. Without this, products of more than one row stay BLAS calls."""
    try:
        from torch._inductor.fx_passes import decompose_mem_bound_mm as mm
    except ImportError:  # another torch layout: the pass keeps its own limits
        mm = None
    limits = _mm_limits(rows)
    if mm is None or compile_options(device, rows) is None or not all(hasattr(mm, k) for k in limits):
        yield
        return
    saved = {name: getattr(mm, name) for name in limits}
    for name, value in limits.items():
        setattr(mm, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(mm, name, value)


_STANCE = getattr(torch.compiler, "set_stance", None)
_SKIP_GUARDS = _STANCE is not None and "skip_guard_eval_unsafe" in inspect.signature(_STANCE).parameters


def _warm_guards():
    """Check only the guards that tell cached steps apart (`set_stance(skip_guard_eval_unsafe=True)`,
    torch >= 2.7); every call has the shapes and objects the step was compiled for."""
    return _STANCE("default", skip_guard_eval_unsafe=True) if _SKIP_GUARDS else contextlib.nullcontext()


def _fused_attention(tokens: Tensor):
    """On CPU, a step's attention over its few queries as explicit math, which inductor fuses into the step's
    kernels: the flash kernel would be a library call between them, and a step must be kernels alone to be
    replayed (`kernel_replay`)."""
    few = tokens.device.type == "cpu" and tokens.shape[1] <= STATIONARY_ROWS
    return torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH) if few else contextlib.nullcontext()


class StaticDecoder:
    """Static caches for `batch` rows of up to `max_len` positions and the compiled one-token step."""

    def __init__(self, model, batch: int, max_len: int) -> None:
        p = model.lm_head.weight
        self.model = model
        self.caches = [
            StaticKVCache(batch, b.attn.n_kv_head, max_len, b.attn.head_dim, p.device, p.dtype) for b in model.blocks
        ]
        # Every decoder shares the steps' code objects, so each model and batch size is one more cache entry.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        mode, options = compile_mode(p.device), compile_options(p.device, batch)
        self.cuda_graphs = mode is not None
        compiled = dict(mode=mode, options=options, dynamic=False, backend=BACKEND)
        self.step = torch.compile(self._step, **compiled)
        self.greedy_step = torch.compile(self._greedy_step, **compiled)
        self.all_step = torch.compile(self._all_step, **compiled)
        self.compile_seconds: float | None = None
        self._compiled: set = set()  # the (step, input shapes) keys this decoder has run once (and so compiled)
        self._inputs: dict[tuple, tuple] = {}  # (token, pad) buffers per key: fixed addresses, every step
        # CPU steps replay their recorded kernels (`kernel_replay`), the CPU counterpart of CUDA graphs
        self.replayable = p.device.type == "cpu" and BACKEND == "inductor"
        self._replays: dict[tuple, KernelReplay | None] = {}
        self.signature = _signature(model)  # where the weights were when the steps were compiled and recorded
        self._said: set[str] = set()  # the reasons given for steps that are not replayed

    def _step(self, token: Tensor, pad: Tensor | None) -> Tensor:
        with _fused_attention(token):
            return self._last_logits(token, pad)

    def _last_logits(self, ids: Tensor, pad: Tensor | None) -> Tensor:
        return self.model(ids, cache=self.caches, last_only=True, pad=pad).logits[:, -1].float()

    def _all_step(self, tokens: Tensor, pad: Tensor | None) -> Tensor:
        with _fused_attention(tokens):
            return self.model(tokens, cache=self.caches, pad=pad).logits.float()

    def _greedy_step(self, token: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
        logp = self._step(token, pad).log_softmax(-1)
        nxt = logp.argmax(-1, keepdim=True)
        return nxt, logp.gather(-1, nxt)[:, 0]

    def prefill(self, ids: Tensor, pad: Tensor | None) -> Tensor:
        """Empty the caches, run the prompt through them eagerly; last-position logits (B, V) in float32."""
        for cache in self.caches:
            cache.reset()
        return self._last_logits(ids, pad)  # the library's attention kernels: a prompt is no step's few queries

    def decode(self, token: Tensor, pad: Tensor | None) -> Tensor:
        """One compiled step on (B, 1) new tokens: last-position logits (B, V) in float32."""
        return self._call(self.step, token, pad)

    def decode_all(self, tokens: Tensor, pad: Tensor | None = None) -> Tensor:
        """One compiled step on (B, T) new tokens (a speculative pass's pending token and proposals): logits
        (B, T, V) in float32 at every position. Each T is compiled once."""
        return self._call(self.all_step, tokens, pad)

    def decode_greedy(self, token: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
        """One compiled step that also picks the token: (argmax ids (B, 1), their log-probabilities (B,))."""
        return self._call(self.greedy_step, token, pad)

    def _call(self, step, token: Tensor, pad: Tensor | None):
        """Run a compiled step; the process's first call of a step compiles it and says how long that took, the
        second records it for `kernel_replay` on CPU, and later calls replay it when that was shown exact.
        CUDA graphs and replays reuse their output buffers at the next run, so those outputs are copied."""
        key = (step, tuple(token.shape), None if pad is None else tuple(pad.shape))
        inputs = self._inputs.get(key)
        if inputs is None:  # fixed addresses: a replay, or a CUDA graph, reads the same buffers every step
            inputs = self._inputs[key] = (torch.zeros_like(token), None if pad is None else torch.zeros_like(pad))
        inputs[0].copy_(token)
        if pad is not None:
            inputs[1].copy_(pad)
        replay = self._replays.get(key)
        if replay is not None:
            return _copied(replay())
        if key not in self._compiled:
            t0 = time.perf_counter()
            with _decomposition_limits(token.device, token.numel()):
                out = step(*inputs)
            self._compiled.add(key)
            self.compile_seconds = time.perf_counter() - t0
            print(f"compiled the decode step in {self.compile_seconds:.1f} s (kept for this process)", file=sys.stderr)
        elif key in self._replays or not self.replayable:
            with _warm_guards():
                out = step(*inputs)
        else:  # the recorded call's outputs are the replays' buffers
            return _copied(self._capture(key, step, inputs))
        return _copied(out) if self.cuda_graphs else out

    def _capture(self, key: tuple, step, inputs: tuple):
        """Call the step once, recording it; keep the recording (None where it cannot be replayed: each
        reason said once)."""
        state = [t for cache in self.caches for t in (cache.k, cache.v, cache.length)]
        written = _next_slots(self.caches, inputs[0].shape[1])
        with _warm_guards():
            out, found = capture(lambda: step(*inputs), inputs[0], [t for t in inputs if t is not None], state, written)
        self._replays[key] = found if isinstance(found, KernelReplay) else None
        if self._replays[key] is None and found not in self._said:
            self._said.add(found)
            print(f"compile: {found}; each step runs through the compiled call", file=sys.stderr)
        return out


def _next_slots(caches: list[StaticKVCache], rows: int) -> WholeState:
    """What a step of `rows` tokens writes: each cache's length, and its `rows` slots from that length on."""
    starts = [int(c.length) for c in caches]
    return WholeState(
        [
            t
            for c, n in zip(caches, starts, strict=True)
            for t in (c.length, c.k[:, :, n : n + rows], c.v[:, :, n : n + rows])
        ]
    )


def _copied(out):
    """A copy of a step's outputs (a tensor or a tuple of them), which the next run overwrites."""
    return out.clone() if isinstance(out, Tensor) else tuple(t.clone() for t in out)


def _signature(model) -> tuple:
    """Where the model's parameters and buffers live, with their dtypes and shapes: the compiled steps were
    made for these, and replays read these addresses."""
    return tuple((t.data_ptr(), t.dtype, t.shape) for t in (*model.parameters(), *model.buffers()))


def static_decoder(model, batch: int, max_len: int) -> StaticDecoder | None:
    """The process's compiled decoder for this model and batch size, or None (with a one-line notice on
    stderr naming the block) when the model cannot decode through static caches."""
    reason = static_blocker(model)
    if reason is not None:
        print(f"compile: {reason}; decoding eagerly", file=sys.stderr)
        return None
    per_model = _DECODERS.setdefault(model, {})
    key = (batch, max_len)
    if key not in per_model or per_model[key].signature != _signature(model):  # new, or its weights moved
        per_model[key] = StaticDecoder(model, batch, max_len)
    return per_model[key]
