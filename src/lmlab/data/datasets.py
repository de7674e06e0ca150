"""Token storage (memmapped train/val arrays, built once per corpus + tokenizer) and batch loaders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmlab.data.shards import PIECE_CHARS, ShardedTokens, build_shards, publish, split_pieces
from lmlab.data.sources import Corpus
from lmlab.data.tokenizers.base import BaseTokenizer
from lmlab.errors import DataError


@dataclass
class TokenSplits:
    """Read-only memmapped token arrays and what they were made from."""

    train: np.ndarray
    val: np.ndarray
    meta: dict


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id."""
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    if vocab_size <= 2**32:
        return np.dtype(np.uint32)
    raise DataError(f"tokenizer: vocabulary of {vocab_size} ids does not fit uint32 token storage")


def prepare_tokens(
    corpus: Corpus,
    tokenizer: BaseTokenizer,
    cache: Path,
    val_fraction: float,
    *,
    workers: int | None = None,
    dtype: str = "auto",
    on_piece=None,
) -> TokenSplits:
    """Tokenise `corpus` once into cache/tokens/<key>/shard_*.bin (in parallel); later calls reuse the shards.

    The key covers the corpus content, the tokenizer fingerprint, the split and the dtype, so a
    changed source or tokenizer builds anew. The last `val_fraction` of the tokens is validation.
    """
    store = resolve_dtype(dtype, tokenizer.vocab_size)
    key_text = f"v2:{corpus.sha256}:{tokenizer.fingerprint()}:{val_fraction}:{store.name}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    folder = cache / "tokens" / key
    reused = (folder / "manifest.json").is_file()
    if not reused:
        _build(corpus, tokenizer, folder, val_fraction, store, workers, on_piece)
    tokens, manifest = ShardedTokens.open(folder)
    meta = {k: v for k, v in manifest.items() if k != "shards"} | {"cache": str(folder), "reused": reused}
    n_train = manifest["n_train"]
    return TokenSplits(train=tokens[:n_train], val=tokens[n_train:], meta=meta)


def _build(
    corpus: Corpus, tokenizer: BaseTokenizer, folder: Path, val_fraction: float, store, workers, on_piece
) -> None:
    """Tokenise into a temporary folder beside `folder` with its manifest, then publish it in one rename."""
    key = folder.name
    workers = max(1, workers or os.cpu_count() or 1)
    # Four pieces per worker balance the load; pieces stay between 256 KB and 4 MB of text.
    size = min(PIECE_CHARS, max(1 << 18, len(corpus.text) // (4 * workers)))
    pieces = split_pieces(corpus.text, corpus.documents, size)
    workers = min(workers, len(pieces))
    # Build beside the target and rename, so a killed build never leaves a half-written cache.
    tmp = folder.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = build_shards(
        tmp, pieces, tokenizer, store, workers=workers, is_documents=corpus.documents is not None, on_piece=on_piece
    )
    n = sum(stats["counts"])
    if n < 2:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"data: corpus '{corpus.name}' tokenises to {n} tokens; it needs at least 2")
    n_val = max(1, int(n * val_fraction))
    tokens = ShardedTokens([tmp / f"shard_{i:05d}.bin" for i in range(len(pieces))], stats["counts"], store)
    val_text = tokenizer.decode(tokens[n - n_val :].tolist())
    val_chars, val_bytes = len(val_text), len(val_text.encode("utf-8", "surrogatepass"))
    n_bytes = len(corpus.text.encode("utf-8", "surrogatepass"))
    manifest = {
        "format": 2,
        "corpus": corpus.name,
        "corpus_sha256": corpus.sha256,
        "sources": corpus.sources or [],
        "documents": len(corpus.documents) if corpus.documents is not None else 1,
        "tokenizer": tokenizer.fingerprint(),
        "tokenizer_name": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": getattr(tokenizer, "eos_id", None),
        "dtype": store.name,
        "n_tokens": n,
        "n_train": n - n_val,
        "n_val": n_val,
        "n_chars": len(corpus.text),
        "n_bytes": n_bytes,
        "val_chars": val_chars,
        "val_bytes": val_bytes,
        "shards": [{"file": f"shard_{i:05d}.bin", "tokens": c} for i, c in enumerate(stats["counts"])],
        "workers": workers,
        "processes": stats["processes"],
        "build_seconds": stats["seconds"],
        "mb_per_s": n_bytes / 1e6 / max(stats["seconds"], 1e-9),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    publish(tmp, folder)


def prepare_data(data, tokenizer: BaseTokenizer | None = None, *, on_piece=None):
    """Corpus, tokenizer (trained unless given) and token splits for a `DataConfig`: the text data module."""
    from lmlab.data.sources import cache_dir, load_corpus
    from lmlab.data.tokenizers.base import build_tokenizer

    corpus = load_corpus(data.name, max_chars=data.max_chars, cache=data.cache_dir, errors=data.errors)
    tokenizer = tokenizer or build_tokenizer(data.tokenizer, corpus.text, vocab_size=data.vocab_size)
    splits = prepare_tokens(
        corpus,
        tokenizer,
        cache_dir(data.cache_dir),
        data.val_fraction,
        workers=data.workers,
        dtype=data.token_dtype,
        on_piece=on_piece,
    )
    return corpus, tokenizer, splits


def separator_id(tokenizer: BaseTokenizer, field: str) -> int:
    """The tokenizer's end-of-text id, which `field` (data.align_bos, data.doc_mask) needs, or a one-line error."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        raise DataError(
            f"{field}: tokenizer '{tokenizer.name}' has no document separator; allowed with: char, byte, word, bpe, "
            "and hf: or tiktoken: tokenizers that declare an end-of-text token"
        )
    return eos


def document_starts(tokens, tokenizer: BaseTokenizer) -> np.ndarray:
    """Positions right after each EOS (and 0): where documents begin, for BOS-aligned sampling."""
    eos = separator_id(tokenizer, "data.align_bos")
    ids = np.asarray(tokens)
    return np.concatenate([[0], np.flatnonzero(ids == eos) + 1]).astype(np.int64)


def resolve_dtype(dtype: str, vocab_size: int) -> np.dtype:
    """`auto` -> the narrowest dtype for the vocabulary; an explicit dtype too narrow for it is an error."""
    if dtype == "auto":
        return token_dtype(vocab_size)
    store = np.dtype(dtype)
    if vocab_size > np.iinfo(store).max + 1:
        raise DataError(
            f"data.token_dtype: {dtype} holds ids below {np.iinfo(store).max + 1:,}, but the tokenizer has "
            f"{vocab_size:,}; allowed: auto, uint32"
        )
    return store


class RandomWindowLoader:
    """Batches of random (B, T) windows and their next-token targets (nanoGPT's `get_batch`).

    An epoch is len(tokens) // (B*T) batches, rounded down to whole optimizer steps of `accum` batches.
    Deterministic given the seed; `state_dict` holds the generator state and the rows drawn in the epoch, so
    a resumed run draws the same batches, at the same or another split of the global batch into ranks and
    micro-batches (the generator draws row by row: one draw of 8 rows is two draws of 4).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        starts: np.ndarray | None = None,
        accum: int = 1,
    ) -> None:
        if len(tokens) <= seq_len + 1:
            raise DataError(
                f"data: {len(tokens)} tokens is smaller than one context window of {seq_len} + 1; "
                "use a larger corpus or a smaller seq_len"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        # Every rank draws the global batch from the same generator and keeps its own rows, so
        # world_size processes at batch b see exactly the rows one process sees at batch world*b.
        self.rank, self.world, self.accum = rank, world, accum
        self.generator = torch.Generator().manual_seed(seed)
        self.consumed = 0  # batches drawn in the current epoch
        self._offsets = np.arange(seq_len + 1)
        # With `starts` (document starts), windows begin only there: BOS-aligned sampling.
        self.starts = None if starts is None else starts[starts < len(tokens) - seq_len - 1]
        if self.starts is not None and not len(self.starts):
            raise DataError(f"data.align_bos: no document starts at least {seq_len + 1} tokens before the end")

    def __len__(self) -> int:
        return _epoch_batches(len(self.tokens), self.batch_size * self.world, self.seq_len, self.accum)

    def __iter__(self):
        while self.consumed < len(self):
            self.consumed += 1
            yield self.sample()
        self.consumed = 0

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch (x, y), each (B, T) int64."""
        span = len(self.tokens) - self.seq_len - 1 if self.starts is None else len(self.starts)
        draw = torch.randint(span, (self.batch_size * self.world,), generator=self.generator)
        draw = draw[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].numpy()
        starts = draw if self.starts is None else self.starts[draw]
        window = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]

    def state_dict(self) -> dict:
        """Generator state and position in the epoch (batches, and the global rows each had)."""
        rows = self.batch_size * self.world
        return {"generator": self.generator.get_state(), "consumed": self.consumed, "rows": rows}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state_dict` was taken, also when it was taken at other global rows per batch."""
        self.generator.set_state(state["generator"])
        self.consumed = _rebatch(int(state["consumed"]), int(state.get("rows", self.batch_size * self.world)), self)


def _epoch_batches(n_tokens: int, rows: int, seq_len: int, accum: int) -> int:
    """Batches of `rows` windows in an epoch, a whole number of optimizer steps of `accum` batches (at least one
    step), so that every split of one global batch into ranks and micro-batches ends its epochs at the same row."""
    return max(1, (n_tokens - 1) // (rows * accum * seq_len)) * accum


def _rebatch(batches: int, rows: int, loader) -> int:
    """`batches` drawn at `rows` global rows each, counted in the loader's own global rows per batch."""
    now = loader.batch_size * loader.world
    if batches * rows % now:
        raise DataError(
            f"resume: the data position ({batches * rows} rows into the epoch) is not a whole number of batches "
            f"of {now} rows (batch {loader.batch_size} x {loader.world} processes); resume with a batch that "
            "divides it"
        )
    return batches * rows // now


class SequentialLoader:
    """Consecutive (B, T) windows read in order from a memmapped token file: each token once per epoch.

    Nothing is loaded beyond the current batch, so corpora larger than memory stream from disk.
    The position is a token offset in `state_dict`, so a resumed run reads on from where it
    stopped. With several ranks, the global batch is split by rows as in RandomWindowLoader.
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, *, rank: int = 0, world: int = 1, accum: int = 1
    ) -> None:
        if len(tokens) <= seq_len + 1:
            raise DataError(f"data: {len(tokens)} tokens is smaller than one context window of {seq_len} + 1")
        self.tokens, self.batch_size, self.seq_len, self.rank, self.world = tokens, batch_size, seq_len, rank, world
        self.accum = accum
        self.position = 0
        self._offsets = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return _epoch_batches(len(self.tokens), self.batch_size * self.world, self.seq_len, self.accum)

    def __iter__(self):
        step = self.batch_size * self.world * self.seq_len
        # the epoch ends after whole optimizer steps, at the same token for every split of the global batch
        end = len(self) * step if (len(self.tokens) - 1) >= step * self.accum else len(self.tokens) - 1
        while self.position + step <= end:
            yield self.sample()
        self.position = 0

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch (x, y), each (B, T) int64, advancing the position by one global batch."""
        first_row = self.position + self.rank * self.batch_size * self.seq_len
        starts = first_row + np.arange(self.batch_size) * self.seq_len
        window = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        self.position += self.batch_size * self.world * self.seq_len
        return window[:, :-1], window[:, 1:]

    def state_dict(self) -> dict:
        """The token offset of the next batch."""
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved offset."""
        self.position = int(state["position"])


def iter_dataset(
    path: str | Path, batch_size: int, seq_len: int, *, dtype: str = "uint16", rank: int = 0, world: int = 1
) -> SequentialLoader:
    """Stream (B, T) batches in order from a token file on disk (e.g. a `prepare_tokens` shard)."""
    return SequentialLoader(
        np.memmap(path, dtype=np.dtype(dtype), mode="r"), batch_size, seq_len, rank=rank, world=world
    )
