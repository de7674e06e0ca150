"""Log-likelihood scoring of a decoder: continuations after contexts, and whole documents by disjoint rolling
windows, the two measurements of lm-evaluation-harness, computed by lmlab itself.

A document of n tokens is scored in windows of at most `max_len` predictions. The first window
predicts tokens 0..max_len-1 after a prefix symbol (the tokenizer's bos, else its end-of-text), so the
first token has something to condition on; each later window predicts the next max_len tokens from
the one token before them; the last, shorter window keeps the full context before its predictions.
Every token is predicted exactly once, so the sum is the document's log-likelihood under the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from lmlab.model.generate import left_pad

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


def prefix_id(tokenizer) -> int:
    """The symbol a document's first token conditions on: bos where the tokenizer has one, else end-of-text."""
    for name in ("bos_id", "eos_id"):
        if (found := getattr(tokenizer, name, None)) is not None:
            return found
    raise ValueError(f"tokenizer '{tokenizer.name}' has neither a bos nor an end-of-text id to condition on")


def rolling_windows(ids: Sequence[int], prefix: int, max_len: int) -> list[Pair]:
    """The (context, continuation) pairs that score `ids` once each, as described in the module docstring."""
    ids = list(ids)
    if not ids:
        return []
    first = min(max_len, len(ids))
    pairs = [([prefix], ids[:first])]
    done = first
    while done < len(ids):
        n = min(len(ids) - done, max_len)
        end = done + n
        pairs.append((ids[max(0, end - max_len - 1) : done], ids[done:end]))
        done = end
    return pairs


@torch.no_grad()
def score_pairs(
    model, pairs: Sequence[Pair], *, max_len: int, batch_size: int = 8, progress: Callable[[int], None] | None = None
) -> list[tuple[float, bool]]:
    """For each (context, continuation): the summed log-probability of the continuation after the context,
    and whether every continuation token is the model's greedy choice.

    Context and continuation together are cut to their last max_len + 1 tokens (the model reads
    max_len). Rows are left-padded in batches of similar length; padding changes no logit.
    """
    device = next(model.parameters()).device
    full = [(list(c) + list(t))[-(max_len + 1) :] for c, t in pairs]
    for (_, t), row in zip(pairs, full, strict=True):
        if not t or len(row) < 2:
            raise ValueError("score_pairs: a continuation needs at least one token and a context of one")
    order = sorted(range(len(pairs)), key=lambda i: -len(full[i]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, pad = left_pad([full[i][:-1] for i in chunk], device)
        logits = model(ids, pad=pad if bool(pad.any()) else None).logits.float().log_softmax(-1)
        for row, i in enumerate(chunk):
            n = len(pairs[i][1])
            target = torch.tensor(full[i][-n:], device=device)
            rows = logits[row, -n:]
            logprob = float(rows.gather(-1, target[:, None]).sum())
            results[i] = (logprob, bool((rows.argmax(-1) == target).all()))
        if progress:
            progress(len(chunk))
    return results


@dataclass
class DocumentScore:
    """Log-likelihood of documents scored in full, and the units to normalise it by."""

    nats: float  # summed log-likelihood (negative)
    tokens: int
    bytes: int
    chars: int
    words: int
    documents: int

    def as_dict(self) -> dict:
        """The sums and the per-unit metrics lm-evaluation-harness reports for a perplexity task."""
        bits = -self.nats / math.log(2)
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "loglikelihood": self.nats,
            "bits_per_token": bits / self.tokens,
            "bits_per_char": bits / self.chars,
            "bits_per_byte": bits / self.bytes,
            "byte_perplexity": 2 ** (bits / self.bytes),
            "word_perplexity": math.exp(-self.nats / self.words),
            "token_perplexity": math.exp(-self.nats / self.tokens),
        }


def document_loglikelihoods(
    model, documents: Sequence[Sequence[int]], prefix: int, *, max_len: int, batch_size: int = 8
) -> list[float]:
    """Each document's log-likelihood (ids), summed over its rolling windows; all windows are batched together."""
    windows, owner = [], []
    for i, ids in enumerate(documents):
        doc = rolling_windows(ids, prefix, max_len)
        windows += doc
        owner += [i] * len(doc)
    totals = [0.0] * len(documents)
    for i, (logprob, _) in zip(owner, score_pairs(model, windows, max_len=max_len, batch_size=batch_size), strict=True):
        totals[i] += logprob
    return totals


def score_documents(model, tokenizer, texts: Iterable[str], *, max_len: int, batch_size: int = 8) -> DocumentScore:
    """Every document scored in full by rolling windows; words are counted as lm-eval counts them (pieces
    between runs of whitespace, empty ends included)."""
    texts = list(texts)
    encoded = [tokenizer.encode(text) for text in texts]
    totals = document_loglikelihoods(model, encoded, prefix_id(tokenizer), max_len=max_len, batch_size=batch_size)
    return DocumentScore(
        nats=sum(totals),
        tokens=sum(len(ids) for ids in encoded),
        bytes=sum(len(t.encode("utf-8")) for t in texts),
        chars=sum(len(t) for t in texts),
        words=sum(len(re.split(r"\s+", t)) for t in texts),
        documents=len(texts),
    )
