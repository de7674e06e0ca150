"""Replaying a compiled CPU decode step's kernels on the same buffers: the CPU counterpart of a CUDA graph.

On CPU, inductor compiles a decode step into one or a few generated C++ kernels, but every call also runs
Dynamo's entry, AOTAutograd's runtime wrapper and inductor's Python wrapper, which allocates each
intermediate buffer anew (about 70 at 4L/128D). For a small model that is more than half of a step.
A static-cache step's inputs never move (fixed input buffers, the caches, the model's parameters), so,
as a CUDA graph replays its kernel launches, the kernels can run again on the buffers of one recorded call.

`capture` records one real call: the generated kernels and the library products that write into a buffer
of the wrapper's (`extern_kernels.mm(..., out=buf)`), with their arguments. It keeps the recording only
when it can show that replaying it is a call of the step: the wrapper does nothing else (any other
operation, or a library call that returns a new tensor, keeps the compiled call), every input and state
tensor is an argument of the recorded calls (no copy made outside them), and, from the state before the
recorded call and with other tokens, a replay gives what a compiled call gives, bit for bit. Outputs live
in the recording's buffers, overwritten by the next replay, as a CUDA graph's are.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# What inductor's wrapper may do besides calling its own kernels: allocate or view buffers, check their shapes
# (fixed here), name dtypes, drop its arguments, and call a library product writing into a buffer (`out=`).
_GLOBALS = {
    "empty_strided_cpu",
    "reinterpret_tensor",
    "assert_size_stride",
    "assert_alignment",
    "torch",
    "extern_kernels",
}
_OUT_VARIANTS = {"mm", "bmm", "addmm", "baddbmm", "bias_addmm"}
_NAMES = _OUT_VARIANTS | {"clear"} | {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}
_KERNEL_PREFIX = "cpp_fused_"


class KernelReplay:
    """The kernel calls of one recorded call of a compiled step, with their arguments, and that call's outputs."""

    def __init__(self, launches: list[tuple[Callable, tuple, dict]], outputs: object) -> None:
        self.launches = launches
        self.outputs = outputs

    def __call__(self) -> object:
        """Run the kernels again; the outputs are the recorded call's tensors, overwritten."""
        for kernel, args, kwargs in self.launches:
            kernel(*args, **kwargs)
        return self.outputs


def _wrapper_of(compiled_graph) -> tuple[dict, object] | str:
    """(the generated module's globals, the wrapper's code) of one compiled graph, or why it is not replayable."""
    call = getattr(compiled_graph, "current_callable", None)
    function = getattr(call, "__func__", call)
    code, names = getattr(function, "__code__", None), getattr(function, "__globals__", None)
    if code is None or names is None:
        return "inductor's wrapper is not Python code"
    for name in code.co_names:
        if name in names and not (name in _GLOBALS or name.startswith(_KERNEL_PREFIX)):
            return f"the compiled step's wrapper uses {name}, which a replay of its kernels would skip"
        if name not in names and name not in _NAMES:
            return f"the compiled step's wrapper uses {name}"
    return names, code


class _Recorder:
    """Stands for a kernel, or for inductor's namespace of library kernels, and notes each call made by the
    recording thread (another thread's calls of the same kernels pass through)."""

    def __init__(self, target, launches: list, refusals: list, thread: int) -> None:
        self.target, self.launches, self.refusals, self.thread = target, launches, refusals, thread

    def __getattr__(self, name: str) -> _Recorder:
        return _Recorder(getattr(self.target, name), self.launches, self.refusals, self.thread)

    def __call__(self, *args, **kwargs):
        if threading.get_ident() != self.thread:
            return self.target(*args, **kwargs)
        name = getattr(self.target, "__name__", "")
        if name in _OUT_VARIANTS and "out" not in kwargs:
            self.refusals.append(f"the compiled step's {name} makes a new tensor")
        self.launches.append((self.target, args, kwargs))
        return self.target(*args, **kwargs)


_ONE_AT_A_TIME = threading.Lock()  # recordings patch shared code: one thread records at a time


@contextlib.contextmanager
def _recording(launches: list, wrappers: list, refusals: list):
    """While inside, every compiled graph that this thread runs is noted in `wrappers` and its kernels' calls in
    `launches`."""
    try:
        from torch._inductor.output_code import CompiledFxGraph
    except ImportError:  # another torch layout
        refusals.append("this torch keeps its compiled graphs where they cannot be recorded")
        yield
        return
    with _ONE_AT_A_TIME:
        original, thread = CompiledFxGraph.__call__, threading.get_ident()

        def noted(graph, inputs):
            if threading.get_ident() != thread:
                return original(graph, inputs)
            found = _wrapper_of(graph)
            wrappers.append(found)
            if isinstance(found, str):
                return original(graph, inputs)
            names, code = found
            called = {n: names[n] for n in code.co_names if n.startswith(_KERNEL_PREFIX) or n == "extern_kernels"}
            names.update({n: _Recorder(kernel, launches, refusals, thread) for n, kernel in called.items()})
            try:
                return original(graph, inputs)
            finally:
                names.update(called)

        CompiledFxGraph.__call__ = noted
        try:
            yield
        finally:
            CompiledFxGraph.__call__ = original


def _storage(t: Tensor) -> int:
    """The address of a tensor's memory (a view and its base share it)."""
    return t.untyped_storage().data_ptr()


def _tensors(value) -> list[Tensor]:
    """The tensors of an output (a tensor or a tuple of them)."""
    return [value] if isinstance(value, Tensor) else [t for t in value if isinstance(t, Tensor)]


def _clones(tensors) -> list[Tensor]:
    return [t.clone() for t in tensors]


def _put(tensors, values) -> None:
    for t, value in zip(tensors, values, strict=True):
        t.copy_(value)


class WholeState:
    """What `capture` compares and puts back by default: the whole of the step's state tensors."""

    def __init__(self, state: Sequence[Tensor]) -> None:
        self.state = list(state)

    def read(self) -> list[Tensor]:
        """Copies of the state as it is now."""
        return _clones(self.state)

    def write(self, values: Sequence[Tensor]) -> None:
        """Put `values` (from `read`) back."""
        _put(self.state, values)


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Bit-for-bit equality (NaNs included, which `torch.equal` calls unequal)."""
    return a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def capture(
    step: Callable[[], object],
    tokens: Tensor,
    inputs: Sequence[Tensor],
    state: Sequence[Tensor],
    written: WholeState | None = None,
):
    """Run `step()` once (a step already compiled) and return (its outputs, a `KernelReplay` or one line saying
    why the step cannot be replayed). `inputs` are the tensors the step reads afresh at every call, among them
    the token ids `tokens`, and `state` those it updates in place (caches): each must be a kernel argument.
    `written` reads and writes back what the step changes (made before this call: a cache's next slots; by
    default all of `state`). The check: from the state before the call, with other tokens, a replay must give
    what a compiled call gives, outputs and `written` bit for bit; state, tokens and outputs are then put back
    as the recorded call left them."""
    written = written or WholeState(state)
    before = written.read()
    launches: list[tuple[Callable, tuple, dict]] = []
    wrappers: list = []
    refusals: list[str] = []
    with _recording(launches, wrappers, refusals):
        outputs = step()
    reason = _refusal(launches, wrappers, refusals, [*inputs, *state], _tensors(outputs))
    if reason is not None:
        return outputs, reason
    recorded, after, token_ids = _clones(_tensors(outputs)), written.read(), tokens.clone()
    replay = KernelReplay(launches, outputs)
    try:
        written.write(before)
        tokens.copy_(torch.where(tokens > 0, tokens - 1, tokens + 1))  # other tokens, from the same state
        expected = [*_clones(_tensors(step())), *written.read()]
        written.write(before)
        replay()
        same = all(_same_bits(a, b) for a, b in zip([*_tensors(outputs), *written.read()], expected, strict=True))
    finally:
        written.write(after)
        _put(_tensors(outputs), recorded)
        tokens.copy_(token_ids)
    return outputs, replay if same else "a replay of the step's kernels did not reproduce its call"


def _refusal(launches, wrappers, refusals, read: list[Tensor], outputs: list[Tensor]) -> str | None:
    """Why a recorded call cannot be replayed as it is, or None."""
    if refusals:
        return refusals[0]
    if len(wrappers) != 1:
        return f"the step ran {len(wrappers)} compiled graphs, not one"
    if isinstance(wrappers[0], str):
        return wrappers[0]
    used = {_storage(a) for _, args, kwargs in launches for a in (*args, *kwargs.values()) if isinstance(a, Tensor)}
    if any(_storage(t) not in used for t in read):
        return "an input or state tensor is not itself an argument of the step's kernels (a copy is)"
    if any(_storage(t) not in used for t in outputs):
        return "the step returns a copy of what its kernels wrote"
    return None
