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

from lmlab.model.generate import iter_generate, left_pad

_END = object()


@dataclass
class Job:
    """One sequence to decode: its prompt, options, and the asyncio queue its tokens go to."""

    ids: list[int]
    max_tokens: int
    seed: int
    options: tuple
    loop: asyncio.AbstractEventLoop
    top_logprobs: int = 0
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    emitted: int = 0
    cancelled: bool = False

    def send(self, item) -> None:
        """Deliver a token (or the end marker / an exception) on the request's event loop, if it still runs."""
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop closed: its request has gone, and the worker must go on serving others
            self.cancelled = True

    def deliver(self, token: int, logprob: float, top_values: list[float] | None, top_ids: list[int] | None) -> None:
        """Send one decoded token with its log-probability and its `top_logprobs` likeliest alternatives."""
        best = list(zip(top_values, top_ids, strict=True))[: self.top_logprobs] if top_values is not None else []
        self.send((token, logprob, best))
        self.emitted += 1

    @property
    def live(self) -> bool:
        """Still wants tokens."""
        return not self.cancelled and self.emitted < self.max_tokens


class Batcher:
    """Collects concurrent requests for one model and decodes them as left-padded batches."""

    OPTION_NAMES = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")

    def __init__(self, model: torch.nn.Module, max_batch: int = 16, decode: dict | None = None) -> None:
        self.model, self.max_batch = model, max_batch
        self.decode = decode or {}  # iter_generate's compile / draft options, the same for every request
        self.waiting: queue.Queue[list[Job]] = queue.Queue()  # groups that must share a batch (n > 1)
        self.deferred: list[list[Job]] = []
        self.largest_batch = 0
        self.batches = 0
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def streams(
        self, ids: list[int], n: int, max_tokens: int, seed: int | None, top_logprobs: int = 0, **options
    ) -> list[AsyncIterator]:
        """`n` samples of one prompt, decoded as rows of one batch; sample i uses seed + i (random seeds if None).

        Each stream yields (token id, log-probability, [(log-probability, token id)] of the `top_logprobs` likeliest).
        """
        key = tuple(options.get(name) for name in self.OPTION_NAMES)
        rng = random.SystemRandom()
        seeds = [rng.randrange(2**31) if seed is None else seed + i for i in range(n)]
        loop = asyncio.get_running_loop()
        jobs = [Job(list(ids), max_tokens, s, key, loop, top_logprobs) for s in seeds]
        self._ensure_worker()
        self.waiting.put(jobs)
        return [self._consume(job) for job in jobs]

    async def _consume(self, job: Job) -> AsyncIterator:
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
        """The oldest waiting group plus every other waiting group with the same options, up to max_batch rows."""
        first = self.deferred.pop(0) if self.deferred else self.waiting.get()
        batch, rest = list(first), []
        while True:
            try:
                self.deferred.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        for group in self.deferred:
            fits = group[0].options == first[0].options and len(batch) + len(group) <= self.max_batch
            if fits:
                batch += group
            else:
                rest.append(group)
        self.deferred = rest
        return [job for job in batch if not job.cancelled]

    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if not jobs:
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(jobs))
            try:
                self._decode(jobs)
            except Exception as exc:  # the requests get the error; the worker keeps serving
                for job in jobs:
                    job.send(exc)
            for job in jobs:
                job.send(_END)

    def _decode(self, jobs: list[Job]) -> None:
        device = next(self.model.parameters()).device
        ids, pad = left_pad([job.ids for job in jobs], device=device)
        options = dict(zip(self.OPTION_NAMES, jobs[0].options, strict=True))
        top = max(job.top_logprobs for job in jobs)
        steps = iter_generate(
            self.model,
            ids,
            max(job.max_tokens for job in jobs),
            pad=pad,
            seed=[job.seed for job in jobs],
            top_logprobs=top,
            **options,
            **self.decode,
        )
        for step in steps:
            tok, lp = step[0], step[1]
            top_lp, top_ids = (step[2][0].tolist(), step[2][1].tolist()) if top else ([None] * len(jobs),) * 2
            for row, job in enumerate(jobs):
                if job.live:
                    job.deliver(int(tok[row, 0]), float(lp[row]), top_lp[row], top_ids[row])
            if not any(job.live for job in jobs):
                return
