"""The sampling rules shared by plain and speculative decoding: top-k, top-p, min-p filters and the
repetition penalty."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def filter_logits(
    logits: Tensor, *, top_k: int | None = None, top_p: float | None = None, min_p: float | None = None
) -> Tensor:
    """Set to -inf every logit outside the top-k, outside the smallest set with mass >= top_p, and (min-p,
    Nguyen et al. 2024) every token whose probability is below min_p times the most likely one's."""
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
    if min_p is not None and 0 < min_p <= 1:
        probs = F.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def apply_repetition_penalty(logits: Tensor, context: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty (Keskar et al. 2019): every token already in the context has its logit divided by
    `penalty` if positive, multiplied if negative."""
    if penalty == 1.0:
        return logits
    seen = torch.gather(logits, -1, context)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, context, seen)
