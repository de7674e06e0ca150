"""Shared encoder-decoder decoding steps: encode once with cached cross-attention K/V, and batched greedy.

Beam search (`beam.py`) and translation/evaluation (`translate.py`) both build on these.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmlab.text.words import BOS_ID, EOS_ID, PAD_ID


def start_decoding(model, src_ids: Tensor, src_valid: Tensor | None, max_len: int, copies: int = 1):
    """Encode once; cross-attention K/V and the source mask repeated `copies` times per row (beams)."""
    if src_valid is None:
        src_valid = src_ids != PAD_ID
    memory, src_mask = model.encode(src_ids, src_valid)
    kv = model.cross_kv(memory)
    if copies > 1:
        kv = [(k.expand(copies, -1, -1, -1), v.expand(copies, -1, -1, -1)) for k, v in kv]
        src_mask = src_mask.expand(copies, -1, -1, -1)
    return kv, src_mask, model.new_cache(src_ids.shape[0] * copies, max_len + 1)


@torch.no_grad()
def greedy_decode(
    model, src_ids: Tensor, src_valid: Tensor | None = None, *, max_len: int = 64, use_cache: bool = True
) -> list[list[int]]:
    """The most likely token at each step, from <bos> until <eos> (kept) or max_len tokens, per source row."""
    model.eval()
    kv, src_mask, cache = start_decoding(model, src_ids, src_valid, max_len)
    B = src_ids.shape[0]
    ys = torch.full((B, 1), BOS_ID, dtype=torch.long, device=src_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
    for _ in range(max_len):
        if use_cache:
            logits = model.decode(ys[:, -1:], kv, src_mask, cache=cache)
        else:
            logits = model.decode(ys, kv, src_mask, last_only=True)
        nxt = suppress_markers(logits[:, -1]).argmax(-1).masked_fill(done, PAD_ID)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == EOS_ID
        if bool(done.all()):
            break
    return [trim_at_eos(row) for row in ys[:, 1:].tolist()]


def suppress_markers(logits: Tensor) -> Tensor:
    """Never emit <pad> or <bos>: they are input markers, not outputs."""
    logits = logits.clone()
    logits[:, [PAD_ID, BOS_ID]] = float("-inf")
    return logits


def trim_at_eos(row: list[int]) -> list[int]:
    """A decoded row up to and including its first <eos>, or without its <pad> when it has none."""
    return row[: row.index(EOS_ID) + 1] if EOS_ID in row else [t for t in row if t != PAD_ID]
