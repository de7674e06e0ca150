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


class CompletionRequest(BaseModel):
    """The subset of OpenAI's completion request lmlab honours (plus top_k, min_p, repetition_penalty)."""

    model: str | None = None
    prompt: str
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    n: Literal[1] = 1
    user: str | None = None


class ChatMessage(BaseModel):
    """One chat turn."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(CompletionRequest):
    """Chat: messages instead of a prompt."""

    prompt: str = ""
    messages: list[ChatMessage] = Field(min_length=1)


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

    def tokens(s: Served, ids: list[int], req: CompletionRequest) -> AsyncIterator[tuple[int, float]]:
        """(token id, log-probability) pairs for one request, decoded in a batch with its neighbours."""
        return s.batcher.tokens(
            ids,
            req.max_tokens,
            req.seed,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p if req.top_p < 1 else None,
            min_p=req.min_p,
            repetition_penalty=req.repetition_penalty,
        )

    async def pieces(s: Served, ids: list[int], req: CompletionRequest):
        """(text piece, token log-probability or None, finish reason or None), ending with a finish reason."""
        stream = TextStream(s.loaded.tokenizer, _stop_list(req.stop))
        steps = tokens(s, ids, req)
        try:
            async for tok, lp in steps:
                yield stream.push(tok), lp, None
                if stream.stopped:
                    yield "", None, "stop"
                    return
        finally:
            await steps.aclose()  # frees the request's batch row at once
        yield stream.flush(), None, "length"

    async def complete(s: Served, ids: list[int], req: CompletionRequest) -> tuple[str, list, str]:
        text, logprobs, finish = "", [], "length"
        async for piece, lp, end in pieces(s, ids, req):
            text += piece
            if lp is not None:
                logprobs.append(lp)
            finish = end or finish
        return text, logprobs, finish

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
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        if not req.stream:
            ids = encode(s, prompt, req.max_tokens)
            async with Slot():
                text, logprobs, finish = await complete(s, ids, req)
            usage = {"prompt_tokens": len(ids), "completion_tokens": len(logprobs)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            else:
                lp = {"token_logprobs": logprobs} if req.logprobs is not None else None
                choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}
            return {"id": rid, "object": obj, "created": created, "model": s.name, "choices": [choice], "usage": usage}
        ids = encode(s, prompt, req.max_tokens)  # errors before the stream opens are plain 4xx
        slot = Slot()
        await slot.__aenter__()

        async def events():
            try:
                chunk_obj = "chat.completion.chunk" if chat else "text_completion"
                async for piece, lp, finish in pieces(s, ids, req):
                    if piece:
                        logprob = lp if req.logprobs is not None else None
                        yield sse(_chunk(rid, chunk_obj, created, s.name, piece, None, chat, logprob))
                    if finish:
                        yield sse(_chunk(rid, chunk_obj, created, s.name, "", finish, chat, None))
                yield "data: [DONE]\n\n"
            finally:
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
                    text, logprobs, finish = await complete(s, encode(s, req.prompt, req.max_tokens), req)
                    out[name] = {
                        "text": text,
                        "finish_reason": finish,
                        "mean_logprob": sum(logprobs) / max(1, len(logprobs)),
                    }
            return {"prompt": req.prompt, "seed": req.seed, "results": out}

    return app


def _chunk(rid, obj, created, model, text, finish, chat, logprob) -> dict:
    if chat:
        choice = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
    else:
        lp = {"token_logprobs": [logprob]} if logprob is not None else None
        choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


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
