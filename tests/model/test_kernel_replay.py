"""Replaying a compiled step's kernels (`lmlab.model.kernel_replay`): exact at other inputs, or refused."""

from __future__ import annotations

import threading

import torch

from lmlab.model.kernel_replay import KernelReplay, capture


def _stepper(width: int, product: bool):
    """A compiled step over a table of 11 rows: state += rows[tokens] summed, out = 2 * state (@ a weight)."""
    torch.manual_seed(0)
    table, weight, state = torch.randn(11, width), torch.randn(width, width), torch.zeros(1, width)

    def step(tokens):
        state.add_(table[tokens].sum(0, keepdim=True))
        return (2 * state) @ weight if product else 2 * state

    def expected(tokens, before):
        after = before + table[tokens].sum(0, keepdim=True)
        return ((2 * after) @ weight if product else 2 * after), after

    return torch.compile(step, dynamic=False), expected, state


def _replays_exactly(width: int, product: bool) -> KernelReplay:
    compiled, expected, state = _stepper(width, product)
    tokens = torch.tensor([3, 1, 4])
    with torch.no_grad():
        compiled(tokens)  # compiles
        _, replay = capture(lambda: compiled(tokens), tokens, [tokens], [state])
        assert isinstance(replay, KernelReplay), replay
        for ids in ([0, 5, 10], [7, 7, 2], [9, 1, 6]):
            before = state.clone()
            tokens.copy_(torch.tensor(ids))
            out, after = expected(tokens, before)
            torch.testing.assert_close(replay(), out)
            torch.testing.assert_close(state, after)
    return replay


def test_a_step_of_generated_kernels_replays_exactly_at_other_inputs(compiled_here):
    replay = _replays_exactly(16, product=False)
    assert replay.launches and all(getattr(k, "__name__", "") not in {"mm", "addmm"} for k, _, _ in replay.launches)


def test_a_library_product_writing_into_its_buffer_is_recorded_and_replayed(compiled_here):
    """A (1, 256) x (256, 256) product stays a BLAS call (`extern_kernels.mm(..., out=buf)`), replayed too."""
    replay = _replays_exactly(256, product=True)
    assert any(getattr(kernel, "__name__", "") in {"mm", "addmm"} for kernel, _, _ in replay.launches)


def test_a_step_calling_an_operator_that_returns_a_new_tensor_is_refused(compiled_here):
    torch.manual_seed(0)
    mats = torch.randn(5, 3, 3) + 3 * torch.eye(3)
    compiled = torch.compile(lambda tokens: torch.linalg.inv(mats[tokens]), dynamic=False)
    tokens = torch.tensor([1, 2])
    with torch.no_grad():
        compiled(tokens)
        out, found = capture(lambda: compiled(tokens), tokens, [tokens], [])
    assert isinstance(found, str) and "ops" in found, found
    torch.testing.assert_close(out, torch.linalg.inv(mats[tokens]))


def test_a_function_that_runs_no_compiled_graph_is_refused():
    state, tokens = torch.zeros(3), torch.tensor([1])
    out, found = capture(lambda: state.add_(tokens), tokens, [tokens], [state])
    assert found == "the step ran 0 compiled graphs, not one"
    assert torch.equal(out, torch.ones(3))


def test_a_compiled_graph_run_by_another_thread_during_a_recording_is_not_recorded(compiled_here):
    from torch._inductor.output_code import CompiledFxGraph

    compiled, _, state = _stepper(16, product=False)
    other, x, tokens = torch.compile(lambda x: x * 3 + 1, dynamic=False), torch.randn(8), torch.tensor([3, 1, 4])
    unpatched = CompiledFxGraph.__call__

    def step_beside_another_thread():
        beside = threading.Thread(target=other, args=(x,))
        beside.start()
        beside.join()
        return compiled(tokens)

    with torch.no_grad():
        compiled(tokens), other(x)
        _, replay = capture(step_beside_another_thread, tokens, [tokens], [state])
    assert isinstance(replay, KernelReplay), replay
    assert CompiledFxGraph.__call__ is unpatched
