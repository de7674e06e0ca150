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

import hmac
import json
from typing import Any

from pydantic import BaseModel, ValidationError

from lmlab.errors import ConfigError, require
from lmlab.infer.completion import CompletionService, Limits
from lmlab.infer.openai_shapes import APIError, ChatRequest, CompletionRequest

try:  # FastAPI resolves handler annotations by name in this module's globals
    from fastapi import Request
except ImportError:  # the [serve] extra is missing: create_app says so through `require`
    Request = None

__all__ = ["Limits", "create_app", "serve"]


def create_app(runs: dict[str, Any], *, limits: Limits | None = None, api_key: str | None = None):
    """The FastAPI app serving `runs` ({model name: LoadedRun}): thin routes over a `CompletionService`."""
    fastapi = require("fastapi", "serve")
    from fastapi.responses import StreamingResponse

    service = CompletionService(runs, limits)
    app = fastapi.FastAPI(title="lmlab", version="1")
    app.exception_handler(APIError)(lambda _, exc: _error(exc))
    app.middleware("http")(_guard(service.limits, api_key))

    async def respond(request, chat: bool):
        req = await _parse(request, ChatRequest if chat else CompletionRequest, service.limits.max_body_bytes)
        if not req.stream:
            return await service.completion(req)
        chunks = await service.stream(req)  # a bad request is a plain 4xx before the stream opens
        return StreamingResponse(_sse(chunks), media_type="text/event-stream")

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/v1/models")
    async def models():
        return service.models()

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await respond(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await respond(request, chat=True)

    if len(service.served) == 2:

        @app.post("/v1/compare")
        async def compare(request: Request):
            return await service.compare(await _parse(request, CompletionRequest, service.limits.max_body_bytes))

    return app


def _error(exc: APIError):
    from fastapi.responses import JSONResponse

    body = {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": None}}
    return JSONResponse(body, status_code=exc.status)


def _guard(limits: Limits, api_key: str | None):
    """Middleware: bearer auth on /v1 (compared in constant time) and the body-size limit."""
    expected = f"Bearer {api_key}".encode()

    async def guard(request, call_next):
        given = request.headers.get("authorization", "").encode()
        if api_key and request.url.path.startswith("/v1") and not hmac.compare_digest(given, expected):
            return _error(
                APIError(401, "missing or wrong API key (Authorization: Bearer ...)", kind="authentication_error")
            )
        length = request.headers.get("content-length")
        if length and int(length) > limits.max_body_bytes:
            return _error(APIError(413, f"request body of {length} bytes exceeds {limits.max_body_bytes}"))
        return await call_next(request)

    return guard


async def _parse(request, cls: type[BaseModel], max_bytes: int) -> BaseModel:
    """The request body as `cls`, or a 4xx naming what is wrong."""
    raw = await request.body()
    if len(raw) > max_bytes:
        raise APIError(413, f"request body of {len(raw)} bytes exceeds {max_bytes}")
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


async def _sse(chunks):
    """Server-sent events: one `data:` line per chunk, then `[DONE]`."""
    async for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def check_port(host: str, port: int) -> None:
    """Fail in one line, before any start-up message, when the address cannot be listened on (a busy port)."""
    import socket

    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        raise ConfigError(
            f"serve: cannot listen on {host}:{port} ({exc.strerror or exc}); choose another with --port"
        ) from None


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
    check_port(host, port)
    uvicorn.run(
        create_app(runs, limits=limits, api_key=api_key),
        host=host,
        port=port,
        timeout_graceful_shutdown=30,
        log_level="info",
    )
