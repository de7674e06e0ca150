"""Autoregressive sampling with a KV cache: temperature, top-k, top-p, min-p, repetition penalty, stop tokens,
per-token log-probabilities, token-by-token streaming (`iter_generate`) and batched prompts of different
lengths (`left_pad`).

`compile=True` decodes through static caches with a compiled step (`lmlab.model.static_decode`): the same
tokens, faster once compiled. `draft` (a smaller model with the same tokenizer) decodes speculatively,
`draft_tokens` proposals per pass of the model (`lmlab.model.speculative`): greedy output is plain
greedy's and sampled output follows the same distribution; `draft_stats` (a `DraftStats`) counts the
proposals and acceptances."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from lmlab.model.sampling import apply_repetition_penalty, filter_logits


def left_pad(prompts: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Batch prompts of different lengths: ids (B, T_max) right-aligned, and each row's padding count (B,).

    Padding slots repeat the row's first token, so they add nothing new to the repetition
    penalty's set; attention never sees them (see `PosContext.pad`).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad: every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    rows = [[p[0]] * (width - len(p)) + list(p) for p in prompts]
    pad = [width - len(p) for p in prompts]
    return torch.tensor(rows, device=device), torch.tensor(pad, device=device)


def supports_left_pad(model) -> bool:
    """Whether the model's attention masks left padding (registry cap `left_pad`)."""
    from lmlab.registry import ATTN

    return bool(ATTN.entry(model.config.attn).caps.get("left_pad"))


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Next token ids (B, 1) from last-position logits (B, V); temperature 0 is greedy.

    A sequence of generators gives each row its own random stream, so a row draws the same
    tokens whatever else is in the batch.
    """
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = F.softmax(filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p, min_p=min_p), dim=-1)
    if isinstance(generator, Sequence):
        return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator, strict=True)])
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def iter_generate(
    model,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: Sequence[int] | None = None,
    use_cache: bool = True,
    seed: int | Sequence[int] | None = None,
    pad: Tensor | None = None,
    top_logprobs: int = 0,
    compile: bool = False,
    draft=None,
    draft_tokens: int = 4,
    draft_stats=None,
) -> Iterator[tuple[Tensor, ...]]:
    """Yield (next ids (B, 1), their log-probabilities (B,)[, (top-k log-probs, ids) with `top_logprobs` k])
    one step at a time. A row that emits a stop id keeps emitting it until every row has stopped. Past
    max_seq_len the context slides (cached and uncached give the same tokens). `pad` (B,) counts each
    row's left padding (`left_pad`): a row gets the tokens it would alone (rows one after another where the
    attention lacks the `left_pad` cap). `seed`: one for the batch, or one per row. `compile`, `draft`: see above."""
    pad = pad if pad is not None and bool(pad.any()) else None
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop, seed=seed)
    options |= dict(repetition_penalty=repetition_penalty, top_logprobs=top_logprobs)
    if draft is not None:
        options |= dict(compile=compile)
        yield from _drafted(model, draft, input_ids, pad, max_new_tokens, draft_tokens, draft_stats, options)
        return
    if pad is not None and not supports_left_pad(model):
        options |= dict(use_cache=use_cache, compile=compile)
        yield from _rows_one_by_one(model, input_ids, pad, max_new_tokens, **options)
        return
    was_training = model.training
    model.eval()
    generator = _generators(seed, input_ids)
    stop_ids = torch.tensor(list(stop or []), device=input_ids.device, dtype=input_ids.dtype)
    stopping = len(stop_ids) > 0  # checked every token: a Python bool, not a tensor's length
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    ids, cache = input_ids, _new_cache(model, input_ids, use_cache, compile)
    try:
        for _ in range(max_new_tokens):
            nxt, chosen, logp = _choose(model, ids, cache, pad, _ == 0, options, generator)
            if stopping:
                nxt = torch.where(done[:, None], stop_ids[0], nxt)
                done |= torch.isin(nxt[:, 0], stop_ids)
            ids = torch.cat([ids, nxt], dim=1)
            if stopping and logp is not None:  # a stopped row's repeated stop token
                chosen = logp.gather(-1, nxt)[:, 0]
            if top_logprobs:
                yield nxt, chosen, logp.topk(min(top_logprobs, logp.shape[-1]), dim=-1)
            else:
                yield nxt, chosen
            if stopping and bool(done.all()):
                break
    finally:
        model.train(was_training)


def _choose(model, ids: Tensor, cache, pad: Tensor | None, first: bool, options: dict, generator):
    """(next ids (B, 1), their log-probabilities (B,), every log-probability (B, V), or None when the
    compiled step chose greedily on its own)."""
    fused = not first and hasattr(cache, "decode_greedy") and ids.shape[1] <= model.config.max_seq_len
    plain = options["repetition_penalty"] == 1.0 and not options["top_logprobs"]
    # A stopped row repeats its stop token with that token's log-probability: only one row needs none.
    if fused and plain and options["temperature"] == 0 and (not options["stop"] or ids.shape[0] == 1):
        return (*cache.decode_greedy(ids[:, -1:], pad), None)
    last = _next_logits(model, ids, cache, pad, first=first)
    logp = last.log_softmax(-1)
    last = apply_repetition_penalty(last, ids, options["repetition_penalty"])
    sampling = {k: options[k] for k in ("temperature", "top_k", "top_p", "min_p")}
    nxt = sample_next(last, **sampling, generator=generator)
    return nxt, logp.gather(-1, nxt)[:, 0], logp


def _new_cache(model, input_ids: Tensor, use_cache: bool, compile: bool):
    """None (no cache), [] (a cache made at the first step) or the process's compiled `StaticDecoder`."""
    if not use_cache:
        return None
    if compile:
        from lmlab.model.static_decode import static_decoder

        return static_decoder(model, input_ids.shape[0], model.config.max_seq_len) or []
    return []


def _drafted(model, draft, input_ids, pad, max_new_tokens: int, draft_tokens: int, stats, options: dict) -> Iterator:
    """`iter_generate` with a draft model: one row speculatively, then (no room left to draft) plainly;
    rows of a batch one by one, since each accepts a different number of tokens."""
    from lmlab.model.speculative import iter_speculative

    if input_ids.shape[0] > 1 or pad is not None:
        options |= dict(draft=draft, draft_tokens=draft_tokens, draft_stats=stats)
        pad = pad if pad is not None else torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        yield from _rows_one_by_one(model, input_ids, pad, max_new_tokens, **options)
        return
    seed = options["seed"]
    options |= dict(seed=seed[0] if isinstance(seed, Sequence) else seed)
    ids = input_ids
    for step in iter_speculative(
        model, draft, input_ids, max_new_tokens, draft_tokens=draft_tokens, stats=stats, **options
    ):
        ids = torch.cat([ids, step[0]], 1)
        yield step
    rest = max_new_tokens - (ids.shape[1] - input_ids.shape[1])
    if rest > 0 and int(ids[0, -1]) not in (options["stop"] or []):  # the context slides on without a draft
        yield from iter_generate(model, ids, rest, **options)


def _generators(seed: int | Sequence[int] | None, input_ids: Tensor):
    """One generator for the batch, one per row, or None."""
    if isinstance(seed, Sequence):
        if len(seed) != input_ids.shape[0]:
            raise ValueError(f"seed: {len(seed)} seeds for a batch of {input_ids.shape[0]} rows")
        return [torch.Generator(device=input_ids.device).manual_seed(s) for s in seed]
    return None if seed is None else torch.Generator(device=input_ids.device).manual_seed(seed)


def _next_logits(model, ids: Tensor, cache, pad: Tensor | None, first: bool) -> Tensor:
    """Last-position logits (B, V) in float32; `cache` is [] before the first cached step, None without a
    cache, or a `StaticDecoder`."""
    max_len = model.config.max_seq_len
    if hasattr(cache, "decode") and ids.shape[1] <= max_len:
        return cache.prefill(ids, pad) if first else cache.decode(ids[:, -1:], pad)
    if cache is not None and ids.shape[1] <= max_len:
        if not cache:
            cache.append(model.new_cache(ids.shape[0], max_len))
            return model(ids, cache=cache[0], last_only=True, pad=pad).logits[:, -1].float()
        return model(ids[:, -1:], cache=cache[0], last_only=True, pad=pad).logits[:, -1].float()
    # Past the context the window drops the oldest slots, padding first.
    window_pad = None if pad is None else (pad - (ids.shape[1] - max_len)).clamp_min(0)
    return model(ids[:, -max_len:], last_only=True, pad=window_pad).logits[:, -1].float()


def _rows_one_by_one(model, input_ids: Tensor, pad: Tensor, max_new_tokens: int, **options) -> Iterator:
    """`iter_generate` row by row, zipped into batched steps; a row that stopped early repeats the stop
    token it emitted, with log-probability 0."""
    seeds = options.pop("seed", None)
    if not isinstance(seeds, Sequence):
        seeds = [seeds] * len(pad)  # one shared seed: each row's stream starts from it
    rows = [
        iter_generate(model, row[int(p) :][None], max_new_tokens, seed=s, **options)
        for row, p, s in zip(input_ids, pad, seeds, strict=True)
    ]
    if options.get("compile"):  # the rows share the process's compiled caches: each row runs to its end in turn
        rows = [iter(list(it)) for it in rows]
    last: list[tuple | None] = [None] * len(rows)
    for _ in range(max_new_tokens):
        live = False
        for i, it in enumerate(rows):
            step = next(it, None)
            if step is not None:
                last[i], live = tuple(part[0] for part in _flat(step)), True
            elif last[i] is not None:
                last[i] = (last[i][0], torch.zeros_like(last[i][1]), *last[i][2:])
        if not live:
            return
        columns = [torch.stack(col) for col in zip(*last, strict=True)]
        yield (columns[0], columns[1], (columns[2], columns[3])) if len(columns) > 2 else tuple(columns)


def _flat(step: tuple) -> tuple:
    """(ids, logp) or (ids, logp, (top values, top ids)) as one flat tuple."""
    return (*step[:2], *step[2]) if len(step) > 2 else step


@torch.no_grad()
def generate(
    model,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    return_logprobs: bool = False,
    **options,
) -> Tensor | tuple[Tensor, Tensor]:
    """Extend input_ids (B, T) by up to max_new_tokens (options as `iter_generate`); with `return_logprobs`,
    also the (B, new) log-probabilities of the chosen tokens."""
    steps = list(iter_generate(model, input_ids, max_new_tokens, **options))
    if not steps:
        empty = input_ids.new_zeros(input_ids.shape[0], 0)
        return (input_ids, empty.float()) if return_logprobs else input_ids
    ids = torch.cat([input_ids, *(t for t, _ in steps)], dim=1)
    if return_logprobs:
        return ids, torch.stack([lp for _, lp in steps], dim=1)
    return ids
