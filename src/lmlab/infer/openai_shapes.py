"""OpenAI's request and response shapes: what a request may ask for, and how choices and log-probabilities look."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field


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
    num_beams: int | None = Field(None, ge=1, le=16, description="beam search of this width (seq2seq runs)")
    length_penalty: float | None = Field(None, ge=0.0, description="beam search's GNMT alpha (default 0.6)")

    def top(self) -> int:
        """How many alternatives each token's log-probabilities list."""
        return 0

    def beams(self) -> int:
        """The beam width asked for (1: none)."""
        return self.num_beams or 1


class CompletionRequest(SamplingRequest):
    """OpenAI's completion request: a prompt, `logprobs` = how many alternatives per token (0-5)."""

    prompt: str
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=16, description="for a seq2seq run, the beam width")

    def top(self) -> int:
        """`logprobs` alternatives per token."""
        return self.logprobs or 0

    def beams(self) -> int:
        """`num_beams`, else `best_of` (1: none)."""
        return self.num_beams or self.best_of or 1


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


def stop_list(stop: str | list[str] | None) -> list[str]:
    """`stop` as a list (OpenAI accepts one string or several)."""
    return [stop] if isinstance(stop, str) else list(stop or [])


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


def completion_logprobs(tokens: list[Token], offset: int = 0) -> dict:
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


def chat_logprobs(tokens: list[Token]) -> dict:
    """The chat `logprobs` object: one entry per token with its bytes and top alternatives."""

    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.text, t.logprob), "top_logprobs": [entry(text, lp) for text, lp in t.top]} for t in tokens
        ],
        "refusal": None,
    }


def choice(index: int, text: str, tokens: list[Token] | None, finish: str | None, chat: bool) -> dict:
    """One choice of a response (or of a stream chunk when finish is None or the text is a piece)."""
    if chat:
        logprobs = None if tokens is None else chat_logprobs(tokens)
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs} | {
            "finish_reason": finish
        }
    logprobs = None if tokens is None else completion_logprobs(tokens)
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def delta(index: int, change: dict, logprobs: dict | None = None, finish: str | None = None) -> dict:
    """One choice of a chat stream chunk."""
    return {"index": index, "delta": change, "logprobs": logprobs, "finish_reason": finish}


def piece(index: int, text: str, tokens: list[Token] | None, finish: str | None, chat: bool) -> dict:
    """One choice of a stream chunk: a text piece (with its tokens' log-probabilities) or the finish reason."""
    if chat:
        return delta(
            index, {"content": text} if text else {}, None if tokens is None else chat_logprobs(tokens), finish
        )
    return choice(index, text, tokens, finish, chat)
