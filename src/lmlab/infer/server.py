"""OpenAI-compatible completions and chat over HTTP for one or more trained runs.

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions` (streaming as server-sent
events, `logprobs`), `POST /v1/chat/completions` (a plain "role: content" template), and with
two runs `POST /v1/compare` (both models, same prompt and seed). Requests are served
concurrently with dynamic batching (`infer/batcher.py`): requests waiting together decode as one
left-padded batch, each with its own seed, so a request's text does not depend on its
neighbours. Limits: body size, prompt length (the context), `max_tokens` and
concurrent requests, each a 4xx in OpenAI's error format. Bearer auth when `api_key` is set.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from lmlab.errors import require
from lmlab.infer.batcher import Batcher
from lmlab.infer.text_stream import TextStream

try:  # FastAPI resolves handler annotations by name in this module's globals
    from fastapi import Request
except ImportError:  # the [serve] extra is missing: create_app says so through `require`
    Request = None


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
    batcher: Batcher = field(init=False)
    max_batch: int = 16

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.loaded.model, self.max_batch)


class SamplingRequest(BaseModel):
    """Options shared by completions and chat (plus lmlab's top_k, min_p, repetition_penalty)."""

    model: str | None = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=64, description="samples of the prompt, decoded as rows of one batch (seed + i)")
    user: str | None = None

    def top(self) -> int:
        """How many alternatives each token's log-probabilities list."""
        return 0


class CompletionRequest(SamplingRequest):
    """OpenAI's completion request: a prompt, `logprobs` = how many alternatives per token (0-5)."""

    prompt: str
    logprobs: int | None = Field(None, ge=0, le=5)

    def top(self) -> int:
        """`logprobs` alternatives per token."""
        return self.logprobs or 0


class ChatMessage(BaseModel):
    """One chat turn."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(SamplingRequest):
    """Chat: messages; `max_completion_tokens` (OpenAI's newer name) wins over `max_tokens`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def model_post_init(self, _context) -> None:
        """Resolve the two names of the length limit."""
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens

    def top(self) -> int:
        """`top_logprobs` alternatives per token."""
        return self.top_logprobs or 0


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The plain template: one "role: content" line per turn, then "assistant:" to continue."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


class APIError(Exception):
    """An error answered in OpenAI's format with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _stop_list(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def create_app(runs: dict[str, Any], *, limits: Limits | None = None, api_key: str | None = None):
    """The FastAPI app serving `runs` ({model name: LoadedRun})."""
    fastapi = require("fastapi", "serve")
    from fastapi.responses import JSONResponse, StreamingResponse

    limits = limits or Limits()
    served = {name: Served(name, loaded, max_batch=limits.max_batch) for name, loaded in runs.items()}
    state = {"active": 0}
    app = fastapi.FastAPI(title="lmlab", version="1")

    def error(exc: APIError) -> JSONResponse:
        body = {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": None}}
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(APIError)
    async def _api_error(_, exc: APIError):
        return error(exc)

    @app.middleware("http")
    async def guard(request, call_next):
        wrong_key = request.headers.get("authorization", "") != f"Bearer {api_key}"
        if api_key and request.url.path.startswith("/v1") and wrong_key:
            message = "missing or wrong API key (Authorization: Bearer ...)"
            return error(APIError(401, message, kind="authentication_error"))
        length = request.headers.get("content-length")
        if length and int(length) > limits.max_body_bytes:
            return error(APIError(413, f"request body of {length} bytes exceeds {limits.max_body_bytes}"))
        return await call_next(request)

    async def parse(request, cls: type[BaseModel]) -> BaseModel:
        raw = await request.body()
        if len(raw) > limits.max_body_bytes:
            raise APIError(413, f"request body of {len(raw)} bytes exceeds {limits.max_body_bytes}")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise APIError(400, f"request body is not UTF-8 (byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise APIError(400, f"request body is not valid JSON: {exc.msg} at position {exc.pos}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"])
            raise APIError(400, f"{param}: {first['msg']}", param=param) from None

    def pick(req: CompletionRequest) -> Served:
        if req.model is None and len(served) == 1:
            return next(iter(served.values()))
        if req.model not in served:
            raise APIError(
                404,
                f"model '{req.model}' is not served; available: {', '.join(served)}",
                param="model",
                kind="not_found_error",
            )
        return served[req.model]

    def encode(s: Served, prompt: str, max_tokens: int) -> list[int]:
        if max_tokens > limits.max_tokens:
            raise APIError(
                400, f"max_tokens: {max_tokens} exceeds the limit of {limits.max_tokens}", param="max_tokens"
            )
        try:
            ids = s.loaded.tokenizer.encode(prompt)
        except Exception as exc:
            raise APIError(400, f"prompt: cannot be encoded by this model's tokenizer: {exc}", param="prompt") from None
        context = s.loaded.config.model.max_seq_len
        if len(ids) > context:
            raise APIError(400, f"prompt: {len(ids)} tokens exceeds the context of {context}", param="prompt")
        if not ids:
            raise APIError(400, "prompt: empty prompt", param="prompt")
        return ids

    def streams(s: Served, ids: list[int], req: SamplingRequest) -> list[AsyncIterator]:
        """One token stream per sample (`n`), decoded as rows of one batch with their neighbours' requests."""
        if req.n > limits.max_batch:
            raise APIError(400, f"n: {req.n} exceeds the batch limit of {limits.max_batch}", param="n")
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
        )

    async def pieces(s: Served, steps: AsyncIterator, req: SamplingRequest):
        """(text piece, Token or None, finish reason or None) for one sample, ending with a finish reason."""
        stream = TextStream(s.loaded.tokenizer, _stop_list(req.stop))
        try:
            async for tok, lp, top in steps:
                yield stream.push(tok), Token.of(s.loaded.tokenizer, tok, lp, top), None
                if stream.stopped:
                    yield "", None, "stop"
                    return
        finally:
            await steps.aclose()  # frees the request's batch row at once
        yield stream.flush(), None, "length"

    async def complete(s: Served, steps: AsyncIterator, req: SamplingRequest) -> tuple[str, list, str]:
        text, tokens, finish = "", [], "length"
        async for piece, token, end in pieces(s, steps, req):
            text += piece
            if token is not None:
                tokens.append(token)
            finish = end or finish
        return text, tokens, finish

    class Slot:
        async def __aenter__(self):
            if state["active"] >= limits.max_concurrent:
                raise APIError(
                    429,
                    f"too many concurrent requests (limit {limits.max_concurrent}); retry later",
                    kind="rate_limit_error",
                )
            state["active"] += 1

        async def __aexit__(self, *exc):
            state["active"] -= 1

    @app.get("/health")
    async def health():
        batching = {
            n: {"batches": s.batcher.batches, "largest_batch": s.batcher.largest_batch} for n, s in served.items()
        }
        return {"status": "ok", "models": list(served), "active_requests": state["active"], "batching": batching}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": n,
                    "object": "model",
                    "created": 0,
                    "owned_by": "lmlab",
                    "arch": s.loaded.config.model.arch_name(),
                }
                for n, s in served.items()
            ],
        }

    def sse(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def run_completion(request, chat: bool):
        req = await parse(request, ChatRequest if chat else CompletionRequest)
        s = pick(req)
        prompt = chat_prompt(req.messages) if chat else req.prompt
        if chat:
            req.stop = [*_stop_list(req.stop), "\nuser:", "\nsystem:"]
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": rid, "created": int(time.time()), "model": s.name}
        wants_logprobs = req.logprobs if chat else req.logprobs is not None
        ids = encode(s, prompt, req.max_tokens)  # errors before a stream opens are plain 4xx
        if not req.stream:
            async with Slot():
                results = await asyncio.gather(*(complete(s, st, req) for st in streams(s, ids, req)))
            choices = [
                _choice(i, text, tokens if wants_logprobs else None, finish, chat)
                for i, (text, tokens, finish) in enumerate(results)
            ]
            done = sum(len(tokens) for _, tokens, _ in results)
            usage = {"prompt_tokens": len(ids), "completion_tokens": done, "total_tokens": len(ids) + done}
            return {
                **head,
                "object": "chat.completion" if chat else "text_completion",
                "choices": choices,
                **{"usage": usage},
            }
        sample_streams = streams(s, ids, req)
        slot = Slot()
        await slot.__aenter__()
        head["object"] = "chat.completion.chunk" if chat else "text_completion"

        async def events():
            merged: asyncio.Queue = asyncio.Queue()

            async def feed(index: int, steps: AsyncIterator) -> None:
                try:
                    if chat:  # OpenAI's first chunk of each choice names the role
                        await merged.put({**head, "choices": [_delta(index, {"role": "assistant", "content": ""})]})
                    async for piece, token, finish in pieces(s, steps, req):
                        if piece:
                            shown = [token] if wants_logprobs and token else None
                            await merged.put({**head, "choices": [_piece(index, piece, shown, None, chat)]})
                        if finish:
                            await merged.put({**head, "choices": [_piece(index, "", None, finish, chat)]})
                finally:
                    await merged.put(None)

            tasks = [asyncio.create_task(feed(i, st)) for i, st in enumerate(sample_streams)]
            try:
                remaining = len(tasks)
                while remaining:
                    item = await merged.get()
                    if item is None:
                        remaining -= 1
                    else:
                        yield sse(item)
                yield "data: [DONE]\n\n"
            finally:
                for task in tasks:
                    task.cancel()
                await slot.__aexit__()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run_completion(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run_completion(request, chat=True)

    if len(served) == 2:

        @app.post("/v1/compare")
        async def compare(request: Request):
            req = await parse(request, CompletionRequest)
            if req.seed is None:
                req.seed = 0  # the point of an A/B is the same randomness on both sides
            out = {}
            async with Slot():
                for name, s in served.items():
                    (steps,) = streams(s, encode(s, req.prompt, req.max_tokens), req.model_copy(update={"n": 1}))
                    text, tokens, finish = await complete(s, steps, req)
                    out[name] = {
                        "text": text,
                        "finish_reason": finish,
                        "mean_logprob": sum(t.logprob for t in tokens) / max(1, len(tokens)),
                    }
            return {"prompt": req.prompt, "seed": req.seed, "results": out}

    return app


@dataclass
class Token:
    """One generated token as the response shows it: its text, log-probability and likeliest alternatives."""

    text: str
    logprob: float
    top: list[tuple[str, float]]

    @classmethod
    def of(cls, tokenizer, tok: int, logprob: float, top: list[tuple[float, int]]) -> Token:
        """From ids: each token's text is its own decoding."""
        return cls(tokenizer.decode([tok]), logprob, [(tokenizer.decode([i]), lp) for lp, i in top])


def _completion_logprobs(tokens: list[Token], offset: int = 0) -> dict:
    """The legacy completions `logprobs` object: tokens, their log-probabilities, top alternatives, offsets."""
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t.text)
    top = [dict(t.top) for t in tokens] if any(t.top for t in tokens) else None
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def _chat_logprobs(tokens: list[Token]) -> dict:
    """The chat `logprobs` object: one entry per token with its bytes and top alternatives."""

    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.text, t.logprob), "top_logprobs": [entry(text, lp) for text, lp in t.top]} for t in tokens
        ],
        "refusal": None,
    }


def _choice(index: int, text: str, tokens: list[Token] | None, finish: str | None, chat: bool) -> dict:
    """One choice of a response (or of a stream chunk when finish is None or the text is a piece)."""
    if chat:
        logprobs = None if tokens is None else _chat_logprobs(tokens)
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs} | {
            "finish_reason": finish
        }
    logprobs = None if tokens is None else _completion_logprobs(tokens)
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def _delta(index: int, delta: dict, logprobs: dict | None = None, finish: str | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def _piece(index: int, text: str, tokens: list[Token] | None, finish: str | None, chat: bool) -> dict:
    """One choice of a stream chunk: a text piece (with its tokens' log-probabilities) or the finish reason."""
    if chat:
        return _delta(
            index, {"content": text} if text else {}, None if tokens is None else _chat_logprobs(tokens), finish
        )
    return _choice(index, text, tokens, finish, chat)


def serve(
    runs: dict[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    api_key: str | None = None,
) -> None:
    """Run the app under uvicorn; SIGINT/SIGTERM stop accepting and let in-flight requests finish (30 s)."""
    uvicorn = require("uvicorn", "serve")
    uvicorn.run(
        create_app(runs, limits=limits, api_key=api_key),
        host=host,
        port=port,
        timeout_graceful_shutdown=30,
        log_level="info",
    )
