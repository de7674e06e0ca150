"""Beam search for encoder-decoder models (KV-cached; the source is encoded once and shared by the beams)."""

from __future__ import annotations

import torch
from torch import Tensor

from lmlab.infer.translate import start_decoding, suppress_markers
from lmlab.reference.data.tokenization import BOS_ID, EOS_ID, PAD_ID


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha = 0 ranks by total log-probability."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(model, src_ids: Tensor, *, beam: int = 4, max_len: int = 64, alpha: float = 0.6) -> list[list[int]]:
    """Beam search per source row: `beam` hypotheses, finished ones ranked by log p / length_penalty."""
    model.eval()
    return [_beam_one(model, src_ids[i : i + 1], beam, max_len, alpha) for i in range(src_ids.shape[0])]


def _beam_one(model, src: Tensor, beam: int, max_len: int, alpha: float) -> list[int]:
    src = src[:, : int((src != PAD_ID).sum())] if bool((src != PAD_ID).any()) else src
    kv, src_mask, cache = start_decoding(model, src, None, max_len, copies=beam)
    device = src.device
    scores = torch.full((beam,), float("-inf"), device=device)
    scores[0] = 0.0  # all beams start identical: keep one so the first step does not pick duplicates
    seqs = [[BOS_ID] for _ in range(beam)]
    finished: list[tuple[float, list[int]]] = []
    last = torch.full((beam, 1), BOS_ID, dtype=torch.long, device=device)
    for step in range(1, max_len + 1):
        logp = suppress_markers(model.decode(last, kv, src_mask, cache=cache)[:, -1].float()).log_softmax(-1)
        cand = (scores[:, None] + logp).flatten()
        top, idx = cand.topk(min(2 * beam, cand.numel()))
        V = logp.shape[-1]
        keep_parent, keep_tok, keep_score = [], [], []
        for s, i in zip(top.tolist(), idx.tolist(), strict=True):
            parent, tok = divmod(i, V)
            if s == float("-inf"):
                break
            if tok == EOS_ID:
                finished.append((s / length_penalty(step, alpha), [*seqs[parent][1:], EOS_ID]))
            else:
                keep_parent.append(parent)
                keep_tok.append(tok)
                keep_score.append(s)
            if len(keep_tok) == beam:
                break
        if len(finished) >= beam or not keep_tok:
            break
        while len(keep_tok) < beam:  # fewer live candidates than beams: pad with dead ones
            keep_parent.append(keep_parent[0])
            keep_tok.append(keep_tok[0])
            keep_score.append(float("-inf"))
        parents = torch.tensor(keep_parent, device=device)
        for c in cache:
            c.reorder(parents)
        seqs = [seqs[p] + [t] for p, t in zip(keep_parent, keep_tok, strict=True)]
        scores = torch.tensor(keep_score, device=device)
        last = torch.tensor(keep_tok, device=device)[:, None]
    if not finished:  # nothing ended within max_len: rank the live hypotheses instead
        finished = [(float(s) / length_penalty(len(q) - 1, alpha), q[1:]) for s, q in zip(scores, seqs, strict=True)]
    return max(finished, key=lambda f: f[0])[1]
