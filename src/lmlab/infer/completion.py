"""The completion service behind the HTTP routes: model choice, limits, concurrency, batching, responses.

Plain methods with no web framework in them, so each is testable on its own. Requests are decoded
by each model's `Batcher` (dynamic batching, one seed per row); `n` samples are rows of one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lmlab.infer import openai_shapes as shapes
from lmlab.infer.batcher import Batcher
from lmlab.infer.openai_shapes import APIError, ChatRequest, CompletionRequest, SamplingRequest, Token
from lmlab.infer.seq2seq_batcher import Seq2SeqBatcher
from lmlab.infer.text_stream import TextStream
from lmlab.text.words import EOS_ID


@dataclass
class Limits:
    """What one request may ask for."""

    max_tokens: int = 512
    max_body_bytes: int = 1 << 20
    max_concurrent: int = 64
    max_batch: int = 16


@dataclass
class Served:
    """A loaded run under a model name, with the batcher that decodes its requests."""

    name: str
    loaded: Any
    max_batch: int = 16
    batcher: Batcher = field(init=False)

    def __post_init__(self) -> None:
        kind = Seq2SeqBatcher if self.seq2seq else Batcher
        self.batcher = kind(self.loaded.model, self.max_batch, decode=getattr(self.loaded, "decode", None))

    @property
    def seq2seq(self) -> bool:
        """An encoder-decoder run: the prompt is its source, the completion its translation."""
        return getattr(self.loaded, "src_tokenizer", None) is not None


class CompletionService:
    """Completions and chat for one or more served runs ({model name: LoadedRun})."""

    def __init__(self, runs: dict[str, Any], limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.served = {name: Served(name, loaded, self.limits.max_batch) for name, loaded in runs.items()}
        self.slots = asyncio.Semaphore(self.limits.max_concurrent)
        self.active = 0

    @contextlib.asynccontextmanager
    async def slot(self):
        """One of `max_concurrent` request slots, or 429 at once when none is free."""
        if self.slots.locked():
            raise APIError(
                429,
                f"too many concurrent requests (limit {self.limits.max_concurrent}); retry later",
                kind="rate_limit_error",
            )
        async with self.slots:
            self.active += 1
            try:
                yield
            finally:
                self.active -= 1

    def pick(self, name: str | None) -> Served:
        """The served model a request names (the only one when it names none)."""
        if name is None and len(self.served) == 1:
            return next(iter(self.served.values()))
        if name not in self.served:
            available = ", ".join(self.served)
            raise APIError(404, f"model '{name}' is not served; available: {available}", "model", "not_found_error")
        return self.served[name]

    def encode(self, s: Served, prompt: str, req: SamplingRequest) -> list[int]:
        """Prompt ids (a seq2seq run's source ids, <eos> ended), after checking the request against the limits."""
        max_tokens, context = req.max_tokens, s.loaded.config.model.max_seq_len
        if max_tokens > self.limits.max_tokens:
            limit = self.limits.max_tokens
            raise APIError(400, f"max_tokens: {max_tokens} exceeds the limit of {limit}", param="max_tokens")
        if req.beams() > 1 and not s.seq2seq:
            raise APIError(
                400, f"num_beams: beam search is for encoder-decoder runs; '{s.name}' samples", param="num_beams"
            )
        if req.beams() > 1 and (req.n > 1 or req.temperature > 0):
            raise APIError(
                400, "num_beams: beam search gives one deterministic hypothesis; ask n=1 and temperature 0", "num_beams"
            )
        if s.seq2seq and max_tokens > context - 1:  # <bos> takes the decoder's first position
            raise APIError(
                400, f"max_tokens: {max_tokens} exceeds this decoder's {context - 1} output tokens", param="max_tokens"
            )
        tokenizer = s.loaded.src_tokenizer if s.seq2seq else s.loaded.tokenizer
        try:
            ids = tokenizer.encode(prompt, eos=True) if s.seq2seq else tokenizer.encode(prompt)
        except Exception as exc:
            raise APIError(400, f"prompt: cannot be encoded by this model's tokenizer: {exc}", param="prompt") from None
        if len(ids) > context:
            raise APIError(400, f"prompt: {len(ids)} tokens exceeds the context of {context}", param="prompt")
        if not ids or (s.seq2seq and len(ids) == 1):
            raise APIError(400, "prompt: empty prompt", param="prompt")
        return ids

    def streams(self, s: Served, ids: list[int], req: SamplingRequest) -> list[AsyncIterator]:
        """One token stream per sample (`n`), decoded as rows of one batch with other requests' rows."""
        if req.n > self.limits.max_batch:
            raise APIError(400, f"n: {req.n} exceeds the batch limit of {self.limits.max_batch}", param="n")
        return s.batcher.streams(
            ids,
            req.n,
            req.max_tokens,
            req.seed,
            top_logprobs=req.top(),
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p if req.top_p < 1 else None,
            min_p=req.min_p,
            repetition_penalty=req.repetition_penalty,
            **({"num_beams": req.beams(), "length_penalty": req.length_penalty} if s.seq2seq else {}),
        )

    async def pieces(self, s: Served, steps: AsyncIterator, req: SamplingRequest):
        """(text piece, Token or None, finish reason or None) for one sample, ending with a finish reason."""
        stream = TextStream(s.loaded.tokenizer, shapes.stop_list(req.stop))
        try:
            async for tok, lp, top in steps:
                if s.seq2seq and tok == EOS_ID:  # the translation is complete
                    yield stream.flush(), None, "stop"
                    return
                yield stream.push(tok), Token.of(s.loaded.tokenizer, tok, lp, top), None
                if stream.stopped:
                    yield "", None, "stop"
                    return
        finally:
            await steps.aclose()  # frees the request's batch row at once
        yield stream.flush(), None, "length"

    async def complete(self, s: Served, steps: AsyncIterator, req: SamplingRequest) -> tuple[str, list[Token], str]:
        """One sample's whole text, its tokens and its finish reason."""
        text, tokens, finish = "", [], "length"
        async for part, token, end in self.pieces(s, steps, req):
            text += part
            if token is not None:
                tokens.append(token)
            finish = end or finish
        return text, tokens, finish

    def prepare(self, req: SamplingRequest, chat: bool) -> tuple[Served, list[int], dict]:
        """The model, the prompt ids (errors here are plain 4xx) and the response head of a request."""
        s = self.pick(req.model)
        if chat and s.seq2seq:  # the source is what the user said last
            users = [m.content for m in req.messages if m.role == "user"]
            if not users:
                raise APIError(
                    400, "messages: a seq2seq run translates the last user message; there is none", "messages"
                )
            prompt = users[-1]
        elif chat:
            req.stop = [*shapes.stop_list(req.stop), "\nuser:", "\nsystem:"]
            prompt = shapes.chat_prompt(req.messages)
        else:
            prompt = req.prompt
        ids = self.encode(s, prompt, req)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        return s, ids, {"id": rid, "created": int(time.time()), "model": s.name}

    async def completion(self, req: CompletionRequest | ChatRequest) -> dict:
        """The whole response of a non-streaming request, every sample decoded in one batch."""
        chat = isinstance(req, ChatRequest)
        s, ids, head = self.prepare(req, chat)
        async with self.slot():
            results = await asyncio.gather(*(self.complete(s, st, req) for st in self.streams(s, ids, req)))
        shown = _wants_logprobs(req)
        choices = [shapes.choice(i, t, tok if shown else None, f, chat) for i, (t, tok, f) in enumerate(results)]
        done = sum(len(tokens) for _, tokens, _ in results)
        usage = {"prompt_tokens": len(ids), "completion_tokens": done, "total_tokens": len(ids) + done}
        kind = "chat.completion" if chat else "text_completion"
        return {**head, "object": kind, "choices": choices, "usage": usage}

    async def stream(self, req: CompletionRequest | ChatRequest) -> AsyncIterator[dict]:
        """Prepare a streaming request (4xx before anything is sent); returns its chunks as they come."""
        chat = isinstance(req, ChatRequest)
        s, ids, head = self.prepare(req, chat)
        samples = self.streams(s, ids, req)
        head["object"] = "chat.completion.chunk" if chat else "text_completion"
        slot = self.slot()
        await slot.__aenter__()
        return self._chunks(s, samples, req, head, chat, slot)

    async def _chunks(self, s: Served, samples: list, req, head: dict, chat: bool, slot) -> AsyncIterator[dict]:
        merged: asyncio.Queue = asyncio.Queue()
        shown = _wants_logprobs(req)

        async def feed(index: int, steps: AsyncIterator) -> None:
            try:
                if chat:  # OpenAI's first chunk of each choice names the role
                    await merged.put({**head, "choices": [shapes.delta(index, {"role": "assistant", "content": ""})]})
                async for part, token, finish in self.pieces(s, steps, req):
                    if part:
                        tokens = [token] if shown and token else None
                        await merged.put({**head, "choices": [shapes.piece(index, part, tokens, None, chat)]})
                    if finish:
                        await merged.put({**head, "choices": [shapes.piece(index, "", None, finish, chat)]})
            finally:
                await merged.put(None)

        tasks = [asyncio.create_task(feed(i, steps)) for i, steps in enumerate(samples)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await merged.get()
                if item is None:
                    remaining -= 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await slot.__aexit__(None, None, None)

    async def compare(self, req: CompletionRequest) -> dict:
        """Both served models on the same prompt and seed (seed 0 unless given)."""
        if req.seed is None:
            req.seed = 0  # the point of an A/B is the same randomness on both sides
        single = req.model_copy(update={"n": 1})
        out = {}
        async with self.slot():
            for name, s in self.served.items():
                (steps,) = self.streams(s, self.encode(s, req.prompt, single), single)
                text, tokens, finish = await self.complete(s, steps, req)
                mean = sum(t.logprob for t in tokens) / max(1, len(tokens))
                out[name] = {"text": text, "finish_reason": finish, "mean_logprob": mean}
        return {"prompt": req.prompt, "seed": req.seed, "results": out}

    def health(self) -> dict:
        """Status, models, active requests and batching counters."""
        batching = {
            n: {"batches": s.batcher.batches, "largest_batch": s.batcher.largest_batch} for n, s in self.served.items()
        }
        return {"status": "ok", "models": list(self.served), "active_requests": self.active, "batching": batching}

    def models(self) -> dict:
        """OpenAI's model list."""
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": "lmlab", "arch": s.loaded.config.model.arch_name()}
            for n, s in self.served.items()
        ]
        return {"object": "list", "data": data}


def _wants_logprobs(req: SamplingRequest) -> bool:
    return bool(req.logprobs) if isinstance(req, ChatRequest) else getattr(req, "logprobs", None) is not None
