"""Dynamic batching for the server: requests that arrive together decode together.

One worker thread per model takes every waiting request with the same sampling options (up to
`max_batch`), left-pads their prompts into one batch and decodes it with per-row seeds, handing
each row's tokens to its request as they come. A row stops when its request has its
`max_tokens`, or when the request goes away (a stop string, a closed connection); the batch ends
when no row is left. Requests that arrive meanwhile wait for the next batch. Because padding
is invisible and each row has its own random stream, a request gets the same tokens as it would
alone with the same seed.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from lmlab.infer.generate import iter_generate, left_pad

_END = object()


@dataclass
class Job:
    """One request: its prompt, options, and the asyncio queue its tokens go to."""

    ids: list[int]
    max_tokens: int
    seed: int
    options: tuple
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    emitted: int = 0
    cancelled: bool = False

    def send(self, item) -> None:
        """Deliver a token (or the end marker / an exception) on the request's event loop."""
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    @property
    def live(self) -> bool:
        """Still wants tokens."""
        return not self.cancelled and self.emitted < self.max_tokens


class Batcher:
    """Collects concurrent requests for one model and decodes them as left-padded batches."""

    OPTION_NAMES = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")

    def __init__(self, model: torch.nn.Module, max_batch: int = 16) -> None:
        self.model, self.max_batch = model, max_batch
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.deferred: list[Job] = []
        self.largest_batch = 0
        self.batches = 0
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    async def tokens(self, ids: list[int], max_tokens: int, seed: int | None, **options) -> AsyncIterator:
        """Yield (token id, log-probability) for one request as its batch decodes them."""
        key = tuple(options.get(name) for name in self.OPTION_NAMES)
        seed = random.SystemRandom().randrange(2**31) if seed is None else seed
        job = Job(list(ids), max_tokens, seed, key, asyncio.get_running_loop())
        self._ensure_worker()
        self.waiting.put(job)
        try:
            while True:
                item = await job.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled = True  # the worker drops the row at its next step

    def _ensure_worker(self) -> None:
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lmlab-batcher", daemon=True)
                self._thread.start()

    def _next_batch(self) -> list[Job]:
        """The oldest waiting job plus every other waiting job with the same options, up to max_batch."""
        first = self.deferred.pop(0) if self.deferred else self.waiting.get()
        batch, rest = [first], []
        while True:
            try:
                self.deferred.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        for job in self.deferred:
            (batch if job.options == first.options and len(batch) < self.max_batch else rest).append(job)
        self.deferred = rest
        return [job for job in batch if not job.cancelled]

    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if not jobs:
                continue
            try:
                self._decode(jobs)
            except Exception as exc:  # the requests get the error; the worker keeps serving
                for job in jobs:
                    job.send(exc)
            for job in jobs:
                job.send(_END)

    def _decode(self, jobs: list[Job]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        device = next(self.model.parameters()).device
        ids, pad = left_pad([job.ids for job in jobs], device=device)
        options = dict(zip(self.OPTION_NAMES, jobs[0].options, strict=True))
        steps = iter_generate(
            self.model, ids, max(job.max_tokens for job in jobs), pad=pad, seed=[job.seed for job in jobs], **options
        )
        for tok, lp in steps:
            for row, job in enumerate(jobs):
                if job.live:
                    job.send((int(tok[row, 0]), float(lp[row])))
                    job.emitted += 1
            if not any(job.live for job in jobs):
                return
