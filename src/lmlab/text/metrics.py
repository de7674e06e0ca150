"""Token accuracy, exact match and corpus BLEU (Papineni et al. 2002), shared by both seq2seq stacks."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def token_accuracy(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of real (mask True) positions where the predicted id equals the target id."""
    m = np.asarray(mask, dtype=bool)
    return float((np.asarray(pred)[m] == np.asarray(target)[m]).mean()) if m.any() else 0.0


def exact_match(hyps: Sequence[Sequence], refs: Sequence[Sequence]) -> float:
    """Fraction of hypotheses identical to their reference (token lists or strings)."""
    if len(hyps) != len(refs):
        raise ValueError(f"exact_match: {len(hyps)} hypotheses for {len(refs)} references")
    return sum(list(h) == list(r) for h, r in zip(hyps, refs, strict=True)) / max(1, len(refs))


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """BLEU in 0..100 over tokenised sentences, one reference each: clipped n-gram precisions for
    n = 1..4, their geometric mean, times the brevity penalty; unsmoothed, so no matching 4-gram gives 0."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs, strict=True):
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(0, len(h) - n + 1)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_p)


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> tuple[float, str]:
    """Corpus BLEU of detokenised strings and which implementation computed it.

    sacrebleu (13a tokenisation, the shareable number) when installed; otherwise `corpus_bleu`
    on lmlab's word tokenisation.
    """
    try:
        import sacrebleu
    except ImportError:
        from lmlab.text.words import tokenize

        return corpus_bleu([tokenize(h) for h in hyps], [tokenize(r) for r in refs]), "local"
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], smooth_method="none").score), "sacrebleu"
