"""Speculative decoding (Leviathan et al. 2023, Chen et al. 2023): a small draft model proposes k tokens, the
target model scores all of them in one forward pass, and the standard accept/reject rule keeps each draft
token x with probability min(1, p(x) / q(x)), replacing the first rejected one by a sample of
norm(max(0, p - q)). The emitted tokens follow the target's distribution exactly; with temperature 0 the
rule reduces to "keep while the draft agrees with the target's argmax", so the output is plain greedy's.

Both models keep caches that can be cut back (the rejected tokens are forgotten); every row of a batch
is decoded on its own, since rows accept different numbers of tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from lmlab.attn.base import CausalSelfAttention
from lmlab.attn.kv_cache import KVCache
from lmlab.errors import ConfigError


class DraftStats:
    """Draft tokens proposed and accepted so far (the acceptance rate the CLI and the bench report)."""

    def __init__(self) -> None:
        self.proposed = 0
        self.accepted = 0

    @property
    def rate(self) -> float:
        """Accepted / proposed (0 before any proposal)."""
        return self.accepted / self.proposed if self.proposed else 0.0


def check_draft(model, draft) -> None:
    """Refuse, in one line, a draft that cannot propose for `model`: a different vocabulary (tokenizer)."""
    if draft.config.vocab_size != model.config.vocab_size:
        raise ConfigError(
            f"sample.draft: the draft has vocab_size {draft.config.vocab_size}, the model "
            f"{model.config.vocab_size}; a draft needs the same tokenizer"
        )
    for m in (model, draft):
        if not hasattr(m, "blocks"):
            raise ConfigError("sample.draft: speculative decoding needs decoder-only models on both sides")


def rollback_caches(model, max_len: int) -> list:
    """One cache per layer that `truncate` can cut back (full-length even for windowed attention, whose mask
    then applies the window), for one row."""
    p = model.lm_head.weight
    caches = []
    for block in model.blocks:
        attn = block.attn
        if isinstance(attn, CausalSelfAttention):
            cache = KVCache(1, attn.n_kv_head, max_len, attn.head_dim, p.device, p.dtype)
        else:
            cache = attn.new_cache(1, max_len, p.device, p.dtype)
        if not hasattr(cache, "truncate"):
            raise ConfigError(f"sample.draft: {model.config.attn} attention's cache cannot drop rejected tokens")
        caches.append(cache)
    return caches


def _dist(logits: Tensor, context: Tensor, temperature: float, options: dict) -> Tensor:
    """The sampling distribution over the vocabulary (V,) for one position, as plain sampling draws from it."""
    from lmlab.model.generate import apply_repetition_penalty, filter_logits

    logits = apply_repetition_penalty(logits[None], context[None], options["repetition_penalty"])[0]
    if temperature == 0:
        return F.one_hot(logits.argmax(), logits.shape[-1]).float()
    filtered = filter_logits(
        logits.float() / temperature, top_k=options["top_k"], top_p=options["top_p"], min_p=options["min_p"]
    )
    return F.softmax(filtered, dim=-1)


def _feed(model, cache: list, tokens: list[int], device) -> Tensor:
    """Run `tokens` through the model on top of its cache; logits (len(tokens), V) in float32."""
    ids = torch.tensor([tokens], device=device)
    return model(ids, cache=cache).logits[0].float()


@torch.no_grad()
def iter_speculative(
    model,
    draft,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    draft_tokens: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: Sequence[int] | None = None,
    seed: int | None = None,
    top_logprobs: int = 0,
    stats: DraftStats | None = None,
) -> Iterator[tuple[Tensor, ...]]:
    """`iter_generate`'s steps (next id (1, 1), its log-probability (1,) under the model[, top-k]) for one row,
    drafted `draft_tokens` at a time by `draft` and verified by `model`."""
    if input_ids.shape[0] != 1:
        raise ValueError("iter_speculative decodes one row; iter_generate splits a batch into rows")
    check_draft(model, draft)
    options = dict(top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty)
    device = input_ids.device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int(torch.randint(2**31, ()).item()))
    stats = stats if stats is not None else DraftStats()
    limit = min(model.config.max_seq_len, draft.config.max_seq_len)
    seq = input_ids[0].tolist()
    stop_set = set(stop or [])
    was = model.training, draft.training
    model.eval()
    draft.eval()
    try:
        if len(seq) >= limit:  # no room to draft: plain decoding slides the context
            yield from _plain(model, seq, max_new_tokens, temperature, options, stop, seed, top_logprobs, device)
            return
        big, small = rollback_caches(model, limit), rollback_caches(draft, limit)
        _feed(model, big, seq[:-1], device) if len(seq) > 1 else None
        emitted = 0
        while emitted < max_new_tokens:
            k = min(draft_tokens, max_new_tokens - emitted, limit - len(seq))
            if k < 1:
                rest = max_new_tokens - emitted
                yield from _plain(model, seq, rest, temperature, options, stop, seed, top_logprobs, device)
                return
            # Draft k tokens, each from the draft's distribution q_i.
            logits = _feed(draft, small, seq[small[0].length :], device)[-1]
            proposals, qs = [], []
            for i in range(k):
                context = torch.tensor(seq + proposals, device=device)
                q = _dist(logits, context, temperature, options)
                x = int(q.argmax()) if temperature == 0 else int(torch.multinomial(q, 1, generator=gen))
                proposals.append(x)
                qs.append(q)
                if i + 1 < k:
                    logits = _feed(draft, small, [x], device)[-1]
            # One target pass scores the pending token and every proposal: p_0 .. p_k.
            base = big[0].length
            target = _feed(model, big, seq[base:] + proposals, device)[len(seq) - base - 1 :]
            accepted = 0
            for i, x in enumerate(proposals):
                context = torch.tensor(seq + proposals[:i], device=device)
                p = _dist(target[i], context, temperature, options)
                keep = float(p[x]) >= float(qs[i][x]) * float(torch.rand((), generator=gen, device=device))
                if temperature == 0:
                    keep = int(p.argmax()) == x
                if not keep:
                    residual = (p - qs[i]).clamp_min(0)
                    nxt = _sample(residual if float(residual.sum()) > 0 else p, temperature, gen)
                    break
                accepted += 1
            else:
                context = torch.tensor(seq + proposals, device=device)
                nxt = _sample(_dist(target[k], context, temperature, options), temperature, gen)
            stats.proposed += k
            stats.accepted += accepted
            new = [*proposals[:accepted], nxt]
            for i, tok in enumerate(new):
                yield _step(target[i], tok, top_logprobs, device)
                emitted += 1
                seq.append(tok)
                if tok in stop_set or emitted >= max_new_tokens:
                    return
            # Keep in the caches only what was accepted; the newest token stays pending for the next pass.
            for cache in big + small:
                cache.truncate(len(seq) - 1)
    finally:
        model.train(was[0])
        draft.train(was[1])


def _sample(dist: Tensor, temperature: float, gen: torch.Generator) -> int:
    return int(dist.argmax()) if temperature == 0 else int(torch.multinomial(dist, 1, generator=gen))


def _step(logits: Tensor, token: int, top_logprobs: int, device) -> tuple:
    """One yielded step: (ids (1, 1), log-probability (1,)[, (top log-probabilities, top ids)])."""
    logp = logits.log_softmax(-1)
    ids = torch.tensor([[token]], device=device)
    out = (ids, logp[token][None])
    if top_logprobs:
        values, index = logp.topk(min(top_logprobs, logp.shape[-1]))
        out += ((values[None], index[None]),)
    return out


def _plain(model, seq, n, temperature, options, stop, seed, top_logprobs, device) -> Iterator:
    """The rest of a generation without a draft (no room left in the draft's context)."""
    from lmlab.model.generate import iter_generate

    ids = torch.tensor([seq], device=device)
    yield from iter_generate(
        model, ids, n, temperature=temperature, stop=stop, seed=seed, top_logprobs=top_logprobs, **options
    )
