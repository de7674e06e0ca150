"""Autoregressive sampling with a KV cache: temperature, top-k, top-p and stop tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set with mass >= top_p."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the first token always stays.
        drop_sorted = (cum - F.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Next token ids (B, 1) from last-position logits (B, V); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(
    model,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[int] | None = None,
    use_cache: bool = True,
    seed: int | None = None,
) -> Tensor:
    """Extend input_ids (B, T) by up to max_new_tokens; a row that emits a stop id is padded with it.

    Past max_seq_len the context slides, so each step re-reads the last max_seq_len tokens; the
    cached and uncached paths give the same tokens in every case.
    """
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    max_len = model.config.max_seq_len
    stop_ids = torch.tensor(list(stop or []), device=input_ids.device, dtype=input_ids.dtype)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    ids, cache = input_ids, None
    for _ in range(max_new_tokens):
        if use_cache and ids.shape[1] <= max_len:
            if cache is None:
                cache = model.new_cache(ids.shape[0], max_len)
                logits = model(ids, cache=cache, last_only=True).logits
            else:
                logits = model(ids[:, -1:], cache=cache, last_only=True).logits
        else:
            logits = model(ids[:, -max_len:], last_only=True).logits
        nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if len(stop_ids):
            nxt = torch.where(done[:, None], stop_ids[0], nxt)
            done |= torch.isin(nxt[:, 0], stop_ids)
        ids = torch.cat([ids, nxt], dim=1)
        if len(stop_ids) and bool(done.all()):
            break
    model.train(was_training)
    return ids
