"""Dynamic batching for served encoder-decoder runs: the request's prompt is the source, the reply its translation.

The same queue, grouping and per-row seeds as `Batcher`, with another decode: the sources of a
batch are padded and encoded once, each decoder layer's cross-attention keys/values computed
once, and the decoder steps from <bos> with its self-attention cache, sampling each row with its
own generator (temperature 0 is greedy) until the row emits <eos> or has its `max_tokens`.
<pad> and <bos> are never emitted, as in `lmlab translate`. `num_beams` > 1 runs `beam_search`
per request (deterministic, one hypothesis) and hands its tokens over at the end, with the
log-probabilities teacher forcing gives them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmlab.infer.batcher import Batcher, Job
from lmlab.infer.beam import beam_search, output_logprobs
from lmlab.infer.decoding import start_decoding, suppress_markers
from lmlab.model.generate import sample_next
from lmlab.model.sampling import apply_repetition_penalty
from lmlab.text.words import BOS_ID, EOS_ID, PAD_ID


class Seq2SeqBatcher(Batcher):
    """Collects concurrent translation requests for one seq2seq model and decodes them as padded batches."""

    OPTION_NAMES = (*Batcher.OPTION_NAMES, "num_beams", "length_penalty")

    @torch.no_grad()
    def _decode(self, jobs: list[Job]) -> None:
        self.model.eval()
        options = dict(zip(self.OPTION_NAMES, jobs[0].options, strict=True))
        beams, alpha = options.pop("num_beams") or 1, options.pop("length_penalty")
        if beams > 1:
            for job in jobs:
                self._beam(job, beams, 0.6 if alpha is None else alpha)
            return
        device = next(self.model.parameters()).device
        width = max(len(job.ids) for job in jobs)
        src = torch.tensor([job.ids + [PAD_ID] * (width - len(job.ids)) for job in jobs], device=device)
        steps = max(job.max_tokens for job in jobs)
        kv, src_mask, cache = start_decoding(self.model, src, src != PAD_ID, steps)
        generators = [torch.Generator(device=device).manual_seed(job.seed) for job in jobs]
        top = max(job.top_logprobs for job in jobs)
        ys = torch.full((len(jobs), 1), BOS_ID, dtype=torch.long, device=device)
        sampling = {k: options[k] for k in ("temperature", "top_k", "top_p", "min_p")}
        for _ in range(steps):
            logits = suppress_markers(self.model.decode(ys[:, -1:], kv, src_mask, cache=cache)[:, -1].float())
            logp = logits.log_softmax(-1)
            logits = apply_repetition_penalty(logits, ys[:, 1:], options["repetition_penalty"])
            nxt = sample_next(logits, **sampling, generator=generators)
            ys = torch.cat([ys, nxt], dim=1)
            chosen = logp.gather(-1, nxt)[:, 0].tolist()
            best = _top(logp, top, len(jobs))
            for row, job in enumerate(jobs):
                if job.live:
                    _deliver(job, int(nxt[row, 0]), chosen[row], *best[row])
            if not any(job.live for job in jobs):
                return

    def _beam(self, job: Job, beams: int, alpha: float) -> None:
        """One request by beam search; its tokens and their log-probabilities under the model."""
        src = torch.tensor([job.ids], device=next(self.model.parameters()).device)
        (hyp,) = beam_search(self.model, src, beam=beams, max_len=job.max_tokens, alpha=alpha)
        logp = output_logprobs(self.model, src, hyp)
        best = _top(logp, job.top_logprobs, len(hyp))
        for step, tok in enumerate(hyp):
            if job.live:
                _deliver(job, tok, float(logp[step, tok]), *best[step])


def _top(logp: Tensor, k: int, rows: int) -> list[tuple[list[float] | None, list[int] | None]]:
    """Each row's k likeliest log-probabilities and ids ((None, None) each when k is 0)."""
    if not k:
        return [(None, None)] * rows
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return list(zip(values.tolist(), ids.tolist(), strict=True))


def _deliver(job: Job, token: int, logprob: float, top_values, top_ids) -> None:
    """Hand one token to its request; a row that emitted <eos> wants no more."""
    job.deliver(token, logprob, top_values, top_ids)
    if token == EOS_ID:
        job.emitted = job.max_tokens
