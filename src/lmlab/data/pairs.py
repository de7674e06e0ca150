"""Sentence-pair data for encoder-decoder runs: sources, word vocabularies, padded torch batches.

`data.name` is `pairs:enfr` (built in), `pairs:PATH` (TSV, CSV or Tatoeba file) or
`task:copy|reverse|sort|add[:N]` (N random examples, default 5000). The pairs are shuffled with
the run's seed and split by `data.val_fraction`; the vocabularies are built from the training
pairs only, so validation measures unknown-word handling honestly.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import torch

from lmlab.config import RunConfig
from lmlab.data.tokenizers.word import WordTokenizer
from lmlab.errors import ConfigError, DataError
from lmlab.text.pairs import encode_pairs, load_pairs, make_batch
from lmlab.text.words import build_vocab

Examples = list[tuple[list[int], list[int]]]
PAIR_PREFIXES = ("pairs:", "task:")


def is_pair_source(name: str) -> bool:
    """Whether `data.name` names sentence pairs rather than a text corpus."""
    return name.startswith(PAIR_PREFIXES)


def read_source(name: str) -> list[tuple[str, str]]:
    """The pairs `data.name` names."""
    if not is_pair_source(name):
        raise ConfigError(f"data.name: '{name}' is not a pair source; allowed: pairs:enfr, pairs:PATH, task:NAME[:N]")
    if name.startswith("task:"):
        parts = name.split(":")
        return load_pairs(f"task:{parts[1]}:{parts[2] if len(parts) > 2 else 5000}")
    return load_pairs(name.removeprefix("pairs:"))


def pairs_sha256(pairs: list[tuple[str, str]]) -> str:
    """Content hash of a pair list (the data fingerprint of a seq2seq run)."""
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()


@dataclass
class PairData:
    """Encoded train/val examples, the two tokenizers and the fingerprint for meta/data.json."""

    train: Examples
    val: Examples
    val_pairs: list[tuple[str, str]]
    src: WordTokenizer
    tgt: WordTokenizer
    meta: dict


def prepare_pairs(cfg: RunConfig, tokenizers: tuple[WordTokenizer, WordTokenizer] | None = None) -> PairData:
    """Read, shuffle, split and encode the pairs; build word vocabularies unless a resumed run brings its own."""
    if cfg.data.tokenizer != "word":
        raise ConfigError(f"data.tokenizer: '{cfg.data.tokenizer}' with arch=seq2seq; allowed: word")
    pairs = read_source(cfg.data.name)
    digest = pairs_sha256(pairs)
    order = list(range(len(pairs)))
    random.Random(cfg.train.seed).shuffle(order)
    n_val = max(1, int(len(pairs) * cfg.data.val_fraction))
    if len(pairs) - n_val < 1:
        raise DataError(f"data: {cfg.data.name} has {len(pairs)} pairs, too few to split off {n_val} for validation")
    train_pairs = [pairs[i] for i in order[n_val:]]
    val_pairs = [pairs[i] for i in order[:n_val]]
    if tokenizers is None:
        if cfg.model.share_embeddings:
            joint = WordTokenizer(build_vocab([s for p in train_pairs for s in p]))
            tokenizers = (joint, joint)
        else:
            tokenizers = (
                WordTokenizer(build_vocab(s for s, _ in train_pairs)),
                WordTokenizer(build_vocab(t for _, t in train_pairs)),
            )
    src, tgt = tokenizers
    limit = cfg.model.max_seq_len - 1  # room for <eos> / <bos>

    def encode(ps: list[tuple[str, str]]) -> Examples:
        return [
            (s[:limit] if len(s) <= limit else [*s[: limit - 1], 2], t[:limit])
            for s, t in encode_pairs(ps, src.vocab, tgt.vocab)
        ]

    train, val = encode(train_pairs), encode(val_pairs)
    meta = {
        "corpus": cfg.data.name,
        "corpus_sha256": digest,
        "tokenizer": f"{src.fingerprint()}:{tgt.fingerprint()}",
        "n_pairs": len(pairs),
        "n_train": len(train),
        "n_val": len(val),
        "n_tokens": sum(len(s) + len(t) + 1 for s, t in train),
        "src_vocab": src.vocab_size,
        "tgt_vocab": tgt.vocab_size,
    }
    return PairData(train, val, val_pairs, src, tgt, meta)


def to_torch(batch: dict) -> dict[str, torch.Tensor]:
    """A numpy batch from `make_batch` as torch tensors (ids int64, masks bool)."""
    return {k: torch.from_numpy(v).long() if v.dtype.kind == "i" else torch.from_numpy(v) for k, v in batch.items()}


class PairLoader:
    """Padded batches of (source, target) examples; each epoch in a seeded order, resumable mid-epoch.

    With `restart=True` (validation) every `iter()` starts from the first batch, so each
    evaluation sees the same batches.
    """

    def __init__(
        self, examples: Examples, batch_size: int, *, seed: int = 0, shuffle: bool = True, restart: bool = False
    ) -> None:
        if not examples:
            raise DataError("data: no sentence pairs to batch")
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.shuffle, self.restart = shuffle, restart
        self.epoch = self.consumed = 0

    def __len__(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def _order(self) -> list[int]:
        order = list(range(len(self.examples)))
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def __iter__(self):
        if self.restart:
            self.consumed = 0
        order = self._order()
        while self.consumed < len(self):
            i = self.consumed * self.batch_size
            self.consumed += 1
            yield to_torch(make_batch([self.examples[j] for j in order[i : i + self.batch_size]]))
        self.consumed = 0
        self.epoch += 1

    def state_dict(self) -> dict:
        """Epoch and batches consumed in it."""
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state_dict` was taken."""
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
