"""The completion service's plain methods: model choice, limits and the concurrency slots, without HTTP."""

import asyncio
from types import SimpleNamespace

import pytest
import torch

from lmlab.infer.completion import CompletionService, Limits
from lmlab.infer.openai_shapes import APIError, CompletionRequest


class _Chars:
    def encode(self, text):
        return [ord(c) % 7 for c in text]


def _service(**limits):
    config = SimpleNamespace(model=SimpleNamespace(max_seq_len=8, arch_name=lambda: "tiny"))
    loaded = SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=_Chars(), config=config)
    return CompletionService({"a": loaded, "b": loaded}, Limits(**limits))


def _asking(max_tokens: int) -> CompletionRequest:
    return CompletionRequest(prompt="", max_tokens=max_tokens)


def test_pick_and_encode_enforce_the_limits():
    service = _service(max_tokens=4)
    with pytest.raises(APIError, match="model 'c' is not served; available: a, b"):
        service.pick("c")
    with pytest.raises(APIError, match="max_tokens: 5 exceeds the limit of 4"):
        service.encode(service.pick("a"), "hi", _asking(5))
    with pytest.raises(APIError, match="prompt: 9 tokens exceeds the context of 8"):
        service.encode(service.pick("a"), "x" * 9, _asking(1))
    assert service.encode(service.pick("b"), "hi", _asking(4)) == [ord("h") % 7, ord("i") % 7]


def test_a_full_service_answers_429_at_once_and_frees_its_slots():
    service = _service(max_concurrent=2)

    async def scenario():
        async with service.slot(), service.slot():
            assert service.active == 2
            with pytest.raises(APIError) as err:
                async with service.slot():
                    pass
            assert err.value.status == 429
        assert service.active == 0
        async with service.slot():
            assert service.health()["active_requests"] == 1

    asyncio.run(scenario())


def test_a_batch_worker_outlives_a_request_whose_event_loop_closed():
    """A request that ends (its loop closed) before the worker delivers its last item leaves the worker serving."""
    from lmlab.infer.batcher import Job

    loop = asyncio.new_event_loop()
    job = Job([1], 4, 0, (), loop)
    loop.close()
    job.send(("token",))  # no RuntimeError escapes into the worker thread
    assert job.cancelled and not job.live
