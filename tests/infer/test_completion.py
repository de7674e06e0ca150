"""The completion service's plain methods: model choice, limits and the concurrency slots, without HTTP."""

import asyncio
from types import SimpleNamespace

import pytest
import torch

from lmlab.infer.completion import CompletionService, Limits
from lmlab.infer.openai_shapes import APIError


class _Chars:
    def encode(self, text):
        return [ord(c) % 7 for c in text]


def _service(**limits):
    config = SimpleNamespace(model=SimpleNamespace(max_seq_len=8, arch_name=lambda: "tiny"))
    loaded = SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=_Chars(), config=config)
    return CompletionService({"a": loaded, "b": loaded}, Limits(**limits))


def test_pick_and_encode_enforce_the_limits():
    service = _service(max_tokens=4)
    with pytest.raises(APIError, match="model 'c' is not served; available: a, b"):
        service.pick("c")
    with pytest.raises(APIError, match="max_tokens: 5 exceeds the limit of 4"):
        service.encode(service.pick("a"), "hi", 5)
    with pytest.raises(APIError, match="prompt: 9 tokens exceeds the context of 8"):
        service.encode(service.pick("a"), "x" * 9, 1)
    assert service.encode(service.pick("b"), "hi", 4) == [ord("h") % 7, ord("i") % 7]


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
