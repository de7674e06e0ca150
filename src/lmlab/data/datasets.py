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


def prepare_tokens(corpus: Corpus, tokenizer: BaseTokenizer, cache: Path, val_fraction: float) -> TokenSplits:
    """Tokenise `corpus` into cache/tokens/<key>/{train,val}.bin once; later calls reuse the files."""
    key = hashlib.sha256(f"{corpus.sha256}:{tokenizer.fingerprint()}:{val_fraction}".encode()).hexdigest()[:20]
    folder = cache / "tokens" / key
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        ids = np.asarray(tokenizer.encode(corpus.text), dtype=token_dtype(tokenizer.vocab_size))
        n_val = max(1, int(len(ids) * val_fraction))
        meta = {
            "corpus": corpus.name,
            "corpus_sha256": corpus.sha256,
            "tokenizer": tokenizer.fingerprint(),
            "dtype": ids.dtype.name,
            "n_tokens": len(ids),
            "n_train": int(len(ids) - n_val),
            "n_val": n_val,
            "n_chars": len(corpus.text),
        }
        # Build beside the target and rename, so a killed build never leaves a half-written cache.
        tmp = folder.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ids[: meta["n_train"]].tofile(tmp / "train.bin")
        ids[meta["n_train"] :].tofile(tmp / "val.bin")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(folder)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_path.read_text())
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(folder / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(folder / "val.bin", dtype=dtype, mode="r")
    return TokenSplits(train=train, val=val, meta=meta)


class RandomWindowLoader:
    """Batches of random (B, T) windows and their next-token targets (nanoGPT's `get_batch`).

    An epoch is len(tokens) // (B*T) batches. Deterministic given the seed; `state_dict` holds the
    generator state and the position within the epoch, so a resumed run draws the same batches.
    """

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, *, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        if len(tokens) <= seq_len + 1:
            raise DataError(
                f"data: {len(tokens)} tokens is smaller than one context window of {seq_len} + 1; "
                "use a larger corpus or a smaller seq_len"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        # Every rank draws the global batch from the same generator and keeps its own rows, so
        # world_size processes at batch b see exactly the rows one process sees at batch world*b.
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self.consumed = 0  # batches drawn in the current epoch
        self._offsets = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return max(1, (len(self.tokens) - 1) // (self.batch_size * self.world * self.seq_len))

    def __iter__(self):
        while self.consumed < len(self):
            self.consumed += 1
            yield self.sample()
        self.consumed = 0

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch (x, y), each (B, T) int64."""
        starts = torch.randint(
            len(self.tokens) - self.seq_len - 1, (self.batch_size * self.world,), generator=self.generator
        )[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        window = torch.from_numpy(self.tokens[starts.numpy()[:, None] + self._offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]

    def state_dict(self) -> dict:
        """Generator state and position in the epoch."""
        return {"generator": self.generator.get_state(), "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state_dict` was taken."""
        self.generator.set_state(state["generator"])
        self.consumed = int(state["consumed"])


class SequentialLoader:
    """Consecutive (B, T) windows read in order from a memmapped token file: each token once per epoch.

    Nothing is loaded beyond the current batch, so corpora larger than memory stream from disk.
    The position is a token offset in `state_dict`, so a resumed run reads on from where it
    stopped. With several ranks, the global batch is split by rows as in RandomWindowLoader.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, *, rank: int = 0, world: int = 1) -> None:
        if len(tokens) <= seq_len + 1:
            raise DataError(f"data: {len(tokens)} tokens is smaller than one context window of {seq_len} + 1")
        self.tokens, self.batch_size, self.seq_len, self.rank, self.world = tokens, batch_size, seq_len, rank, world
        self.position = 0
        self._offsets = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return max(1, (len(self.tokens) - 1) // (self.batch_size * self.world * self.seq_len))

    def __iter__(self):
        step = self.batch_size * self.world * self.seq_len
        while self.position + step < len(self.tokens):
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
