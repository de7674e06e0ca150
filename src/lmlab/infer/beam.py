"""Beam search for encoder-decoder models (KV-cached; the source is encoded once and shared by the beams).

A hypothesis scores log p(y | x) / length_penalty(len(y)) (GNMT, Wu et al. 2016), with <pad> and
<bos> excluded from the output distribution as in greedy decoding; `hypothesis_score` computes
that rule for any output. A search stops only when no live beam can still beat its best finished
hypothesis: a live beam's log-probability can only fall, but its length penalty keeps growing,
so its bound is its score under the most favourable penalty of any length it can still reach.
Hypotheses still alive at `max_len` end there, truncated, as greedy decoding's do.

Plain beam search is not monotone in its width: the greedy prefix can fall out of a wider beam
whose survivors then end badly. With `monotone=True` (the default) the search of width k runs
the searches of widths 1..k side by side in one batch (k(k+1)/2 rows) and returns the best
hypothesis any of them finished, so beam k never scores below beam k-1, nor beam 1 below greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmlab.infer.decoding import start_decoding, suppress_markers
from lmlab.text.words import BOS_ID, EOS_ID, PAD_ID


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha = 0 ranks by total log-probability."""
    return ((5 + length) / 6) ** alpha


def best_possible(score: float, length: int, max_len: int, alpha: float) -> float:
    """Upper bound of the final score of a live beam with log-probability `score` after `length` tokens."""
    # score <= 0 never rises, and the penalty is monotone in the length: one of the two ends is best.
    return max(score / length_penalty(n, alpha) for n in (length + 1, max_len))


@dataclass
class _Search:
    """One beam of `width` rows, starting at row `start` of the shared batch."""

    width: int
    start: int
    alpha: float
    max_len: int
    scores: list[float] = field(default_factory=list)
    seqs: list[list[int]] = field(default_factory=list)
    finished: list[tuple[float, list[int]]] = field(default_factory=list)
    done: bool = False

    def __post_init__(self) -> None:
        # All rows start identical: keep one so the first step does not pick duplicates.
        self.scores = [0.0] + [float("-inf")] * (self.width - 1)
        self.seqs = [[] for _ in range(self.width)]

    def advance(self, logp: Tensor, step: int) -> tuple[list[int], list[int]]:
        """Extend by one token from this search's rows of `logp` (width, V); the batch rows to keep and their tokens."""
        rows = list(range(self.start, self.start + self.width))
        if self.done:
            return rows, [BOS_ID] * self.width  # idle rows: their output is never read
        cand = (torch.tensor(self.scores, device=logp.device)[:, None] + logp).flatten()
        top, idx = cand.topk(min(2 * self.width, cand.numel()))  # width live ones survive even if width of them end
        V = logp.shape[-1]
        keep: list[tuple[float, int, int]] = []  # (score, parent, token)
        for s, i in zip(top.tolist(), idx.tolist(), strict=True):
            parent, tok = divmod(i, V)
            if s == float("-inf"):
                break
            if tok == EOS_ID:
                self.finished.append((s / length_penalty(step, self.alpha), [*self.seqs[parent], EOS_ID]))
            else:
                keep.append((s, parent, tok))
            if len(keep) == self.width:
                break
        if step == self.max_len:  # out of room: live hypotheses end here, truncated
            self.finished += [(s / length_penalty(step, self.alpha), [*self.seqs[p], t]) for s, p, t in keep]
        best = max((f[0] for f in self.finished), default=float("-inf"))
        bound = max((best_possible(s, step, self.max_len, self.alpha) for s, _, _ in keep), default=float("-inf"))
        if step == self.max_len or not keep or best >= bound:
            self.done = True
            return rows, [BOS_ID] * self.width
        keep += [(float("-inf"), keep[0][1], keep[0][2])] * (self.width - len(keep))  # pad with dead rows
        self.seqs = [[*self.seqs[p], t] for _, p, t in keep]
        self.scores = [s for s, _, _ in keep]
        return [self.start + p for _, p, _ in keep], [t for _, _, t in keep]


@torch.no_grad()
def beam_search(
    model, src_ids: Tensor, *, beam: int = 4, max_len: int = 64, alpha: float = 0.6, monotone: bool = True
) -> list[list[int]]:
    """Beam search per source row: the best hypothesis by log p / length_penalty (see the module docstring)."""
    model.eval()
    return [_beam_one(model, src_ids[i : i + 1], beam, max_len, alpha, monotone) for i in range(src_ids.shape[0])]


def _strip_padding(src: Tensor) -> Tensor:
    return src[:, : int((src != PAD_ID).sum())] if bool((src != PAD_ID).any()) else src


def _beam_one(model, src: Tensor, beam: int, max_len: int, alpha: float, monotone: bool) -> list[int]:
    src = _strip_padding(src)
    widths = range(1, beam + 1) if monotone else [beam]
    searches, start = [], 0
    for w in widths:
        searches.append(_Search(w, start, alpha, max_len))
        start += w
    kv, src_mask, cache = start_decoding(model, src, None, max_len, copies=start)
    last = torch.full((start, 1), BOS_ID, dtype=torch.long, device=src.device)
    for step in range(1, max_len + 1):
        logp = suppress_markers(model.decode(last, kv, src_mask, cache=cache)[:, -1].float()).log_softmax(-1)
        parents, tokens = [], []
        for s in searches:
            p, t = s.advance(logp[s.start : s.start + s.width], step)
            parents += p
            tokens += t
        if all(s.done for s in searches):
            break
        for c in cache:
            c.reorder(torch.tensor(parents, device=src.device))
        last = torch.tensor(tokens, device=src.device)[:, None]
    return max((f for s in searches for f in s.finished), key=lambda f: f[0])[1]


@torch.no_grad()
def hypothesis_score(model, src_ids: Tensor, output: list[int], alpha: float = 0.6) -> float:
    """The score beam search gives `output` for one source row (1, S): log p / length_penalty(len)."""
    logp = output_logprobs(model, src_ids, output)
    total = float(logp[torch.arange(len(output)), torch.tensor(output, device=logp.device)].sum())
    return total / length_penalty(len(output), alpha)


@torch.no_grad()
def output_logprobs(model, src_ids: Tensor, output: list[int]) -> Tensor:
    """Teacher-forced log-probabilities (len(output), V) of each step of `output` for one source row (1, S), with
    <pad> and <bos> excluded as decoding excludes them."""
    model.eval()
    src = _strip_padding(src_ids)
    tgt_in = torch.tensor([[BOS_ID, *output[:-1]]], device=src.device)
    return suppress_markers(model(src, tgt_in, src != PAD_ID).logits[0].float()).log_softmax(-1)
