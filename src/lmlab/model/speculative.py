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
from lmlab.model.sampling import apply_repetition_penalty, filter_logits


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
    logits = apply_repetition_penalty(logits[None], context[None], options["repetition_penalty"])[0]
    if temperature == 0:
        return F.one_hot(logits.argmax(), logits.shape[-1]).float()
    filtered = filter_logits(
        logits.float() / temperature, top_k=options["top_k"], top_p=options["top_p"], min_p=options["min_p"]
    )
    return F.softmax(filtered, dim=-1)


class _Side:
    """One model of the pair with caches that can be cut back, fed eagerly."""

    def __init__(self, model, limit: int, device) -> None:
        self.model, self.device = model, device
        self.cache = rollback_caches(model, limit)
        self.length = 0

    def feed(self, tokens: list[int]) -> Tensor:
        """Run `tokens` on top of the cache; logits (len(tokens), V) in float32."""
        ids = torch.tensor([tokens], device=self.device)
        self.length += len(tokens)
        return self.model(ids, cache=self.cache).logits[0].float()

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on."""
        for c in self.cache:
            c.truncate(length)
        self.length = length


_CATCH_UP = 4  # up to this many tokens are fed to a compiled side one compiled step at a time


class _CompiledSide(_Side):
    """The same over the process's static caches: a verification pass of `width` tokens is one compiled step,
    up to `_CATCH_UP` tokens (a draft's step, a catch-up) are compiled one-token steps, and longer inputs (the
    prompt) run eagerly through the same caches."""

    def __init__(self, model, decoder, width: int, device) -> None:
        self.model, self.device, self.decoder, self.width = model, device, decoder, width
        self.cache = decoder.caches
        for c in self.cache:
            c.reset()
        self.length = 0

    def feed(self, tokens: list[int]) -> Tensor:
        ids = torch.tensor([tokens], device=self.device)
        self.length += len(tokens)
        if len(tokens) == self.width > 1:
            return self.decoder.decode_all(ids)[0]
        if len(tokens) <= _CATCH_UP:  # a catch-up of a few tokens (all k accepted): compiled steps beat an eager pass
            return torch.cat([self.decoder.decode(ids[:, i : i + 1], None) for i in range(len(tokens))])
        return self.model(ids, cache=self.cache).logits[0].float()


def _sides(model, draft, limit: int, draft_tokens: int, compile: bool, device) -> tuple[_Side, _Side]:
    """The target and the draft, each compiled where asked and its blocks allow (else eager, with the notice)."""
    if not compile:
        return _Side(model, limit, device), _Side(draft, limit, device)
    from lmlab.model.static_decode import static_decoder

    pair = []
    for m, width in ((model, draft_tokens + 1), (draft, 1)):
        decoder = static_decoder(m, 1, limit)
        shared = bool(pair) and isinstance(pair[0], _CompiledSide) and pair[0].decoder is decoder
        eager = decoder is None or shared  # a model drafting for itself: its static caches are the target's
        pair.append(_Side(m, limit, device) if eager else _CompiledSide(m, decoder, width, device))
    return pair[0], pair[1]


@torch.no_grad()
def iter_speculative(
    model,
    draft,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    draft_tokens: int = 4,
    stats: DraftStats | None = None,
    stop: Sequence[int] | None = None,
    seed: int | None = None,
    top_logprobs: int = 0,
    compile: bool = False,
    **sampling,
) -> Iterator[tuple[Tensor, ...]]:
    """`iter_generate`'s steps (next id (1, 1), its log-probability (1,) under the model[, top-k]) for one row,
    drafted `draft_tokens` at a time by `draft` and verified by `model`; `sampling` is iter_generate's
    temperature, top_k, top_p, min_p and repetition_penalty. With `compile`, the draft's steps and the
    verification pass are compiled over static caches. Ends early, after a stop id or when the context has
    no room left to draft (iter_generate then goes on without a draft)."""
    if input_ids.shape[0] != 1:
        raise ValueError("iter_speculative decodes one row; iter_generate splits a batch into rows")
    check_draft(model, draft)
    rule = _Rule(sampling, seed, input_ids.device)
    stats = stats if stats is not None else DraftStats()
    limit = min(model.config.max_seq_len, draft.config.max_seq_len)
    seq = input_ids[0].tolist()
    stop_ids = set(stop or [])
    was = model.training, draft.training
    model.eval()
    draft.eval()
    try:
        if len(seq) >= limit:
            return
        big, small = _sides(model, draft, limit, draft_tokens, compile, rule.device)
        if len(seq) > 1:
            big.feed(seq[:-1])
        emitted = 0
        while emitted < max_new_tokens:
            k = min(draft_tokens, max_new_tokens - emitted, limit - len(seq))
            if k < 1:
                return
            proposals, qs = _propose(small, seq, k, rule)
            base = big.length  # one target pass scores the pending token and every proposal: p_0 .. p_k
            target = big.feed(seq[base:] + proposals)[len(seq) - base - 1 :]
            new = rule.verify(seq, proposals, qs, target)
            stats.proposed += k
            stats.accepted += len(new) - 1
            for i, tok in enumerate(new):
                yield _step(target[i], tok, top_logprobs, rule.device)
                emitted += 1
                seq.append(tok)
                if tok in stop_ids or emitted >= max_new_tokens:
                    return
            # Keep in the caches only what was accepted; the newest token stays pending for the next pass.
            big.truncate(len(seq) - 1)
            small.truncate(min(small.length, len(seq) - 1))
    finally:
        model.train(was[0])
        draft.train(was[1])


class _Rule:
    """The sampling distribution of a position and the accept/reject rule, with one random stream."""

    def __init__(self, sampling: dict, seed: int | None, device) -> None:
        self.temperature = sampling.get("temperature", 1.0)
        self.options = {name: sampling.get(name) for name in ("top_k", "top_p", "min_p")}
        self.options["repetition_penalty"] = sampling.get("repetition_penalty", 1.0)
        # Plain greedy: every distribution is the one-hot of the logits' argmax (top-k, top-p and min-p keep
        # it), so proposals and checks compare argmaxes and no distribution is built.
        self.greedy = self.temperature == 0 and self.options["repetition_penalty"] == 1.0
        self.device = device
        self.no_context = torch.zeros(0, dtype=torch.long, device=device)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed if seed is not None else int(torch.randint(2**31, ()).item()))

    def dist(self, logits: Tensor, context: list[int]) -> Tensor:
        """The distribution (V,) plain sampling draws from after `context`."""
        if self.options["repetition_penalty"] == 1.0:  # the context changes nothing: not built per position
            return _dist(logits, self.no_context, self.temperature, self.options)
        return _dist(logits, torch.tensor(context, device=self.device), self.temperature, self.options)

    def sample(self, dist: Tensor) -> int:
        """A draw from `dist` (its argmax at temperature 0)."""
        if self.temperature == 0:
            return int(dist.argmax())
        return int(torch.multinomial(dist, 1, generator=self.gen))

    def verify(self, seq: list[int], proposals: list[int], qs: list[Tensor], target: Tensor) -> list[int]:
        """The accepted proposals and one more token: the residual draw at the first rejection, or a draw
        from the last target distribution when every proposal is kept."""
        if self.greedy:  # the residual of two one-hots at a rejection is the target's own one-hot
            best = target[: len(proposals) + 1].argmax(-1).tolist()
            kept = next((i for i, (x, b) in enumerate(zip(proposals, best, strict=False)) if x != b), len(proposals))
            return [*proposals[:kept], best[kept]]
        for i, x in enumerate(proposals):
            p = self.dist(target[i], seq + proposals[:i])
            u = float(torch.rand((), generator=self.gen, device=self.device))
            keep = int(p.argmax()) == x if self.temperature == 0 else float(p[x]) >= float(qs[i][x]) * u
            if not keep:
                residual = (p - qs[i]).clamp_min(0)
                return [*proposals[:i], self.sample(residual if float(residual.sum()) > 0 else p)]
        return [*proposals, self.sample(self.dist(target[len(proposals)], seq + proposals))]


def _propose(draft: _Side, seq: list[int], k: int, rule: _Rule) -> tuple[list[int], list[Tensor]]:
    """k draft tokens, each drawn from the draft's distribution q_i, and those distributions."""
    logits = draft.feed(seq[draft.length :])[-1]
    proposals, qs = [], []
    for i in range(k):
        q = logits if rule.greedy else rule.dist(logits, seq + proposals)  # greedy: `verify` needs no q
        proposals.append(rule.sample(q))  # at temperature 0, q's argmax
        qs.append(q)
        if i + 1 < k:
            logits = draft.feed(proposals[-1:])[-1]
    return proposals, qs


def _step(logits: Tensor, token: int, top_logprobs: int, device) -> tuple:
    """One yielded step: (ids (1, 1), log-probability (1,)[, (top log-probabilities, top ids)])."""
    logp = logits.log_softmax(-1)
    ids = torch.tensor([[token]], device=device)
    out = (ids, logp[token][None])
    if top_logprobs:
        values, index = logp.topk(min(top_logprobs, logp.shape[-1]))
        out += ((values[None], index[None]),)
    return out
