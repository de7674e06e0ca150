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

from lmlab.infer.batcher import Batcher, Job
from lmlab.infer.beam import beam_search
from lmlab.infer.decoding import start_decoding, suppress_markers
from lmlab.model.generate import sample_next
from lmlab.model.sampling import apply_repetition_penalty
from lmlab.text.words import BOS_ID, EOS_ID, PAD_ID


class Seq2SeqBatcher(Batcher):
    """Collects concurrent translation requests for one seq2seq model and decodes them as padded batches."""

    OPTION_NAMES = (*Batcher.OPTION_NAMES, "num_beams", "length_penalty")

    @torch.no_grad()
    def _decode(self, jobs: list[Job]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
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
            logits = (
                apply_repetition_penalty(logits, ys[:, 1:], options["repetition_penalty"])
                if ys.shape[1] > 1
                else logits
            )
            nxt = sample_next(logits, **sampling, generator=generators)
            ys = torch.cat([ys, nxt], dim=1)
            chosen = logp.gather(-1, nxt)[:, 0].tolist()
            best = logp.topk(min(top, logp.shape[-1]), dim=-1) if top else None
            for row, job in enumerate(jobs):
                if job.live:
                    self._send(job, int(nxt[row, 0]), chosen[row], best, row)
            if not any(job.live for job in jobs):
                return

    def _beam(self, job: Job, beams: int, alpha: float) -> None:
        """One request by beam search; its tokens and their log-probabilities under the model."""
        device = next(self.model.parameters()).device
        src = torch.tensor([job.ids], device=device)
        (hyp,) = beam_search(self.model, src, beam=beams, max_len=job.max_tokens, alpha=alpha)
        tgt_in = torch.tensor([[BOS_ID, *hyp[:-1]]], device=device)
        logp = suppress_markers(self.model(src, tgt_in).logits[0].float()).log_softmax(-1)
        best = logp.topk(min(job.top_logprobs, logp.shape[-1]), dim=-1) if job.top_logprobs else None
        for step, tok in enumerate(hyp):
            if job.live:
                self._send(job, tok, float(logp[step, tok]), best, step)

    @staticmethod
    def _send(job: Job, tok: int, logprob: float, best, row: int) -> None:
        """Hand one token to its request; a row that emitted <eos> wants no more."""
        top = []
        if best is not None:
            top = list(zip(best.values[row].tolist(), best.indices[row].tolist(), strict=True))[: job.top_logprobs]
        job.send((tok, logprob, top))
        job.emitted += 1
        if tok == EOS_ID:
            job.emitted = job.max_tokens
