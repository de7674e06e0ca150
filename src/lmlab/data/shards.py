"""Parallel tokenisation into sharded memmap files with a manifest, and a read-only view across the shards.

The corpus is cut into pieces at line or document boundaries; worker processes (spawned, so a
parent that already ran torch's thread pools is safe) each tokenise pieces and write one
`shard_NNNNN.bin` per piece. `manifest.json` records the token count of every shard, the dtype,
the tokenizer fingerprint and the source hashes; a later call with the same corpus and
tokenizer finds the manifest and reuses the shards, anything else builds a new folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from lmlab.errors import DataError

PIECE_CHARS = 4_000_000  # ~4 MB of text per shard: enough pieces to keep every worker busy


def split_pieces(text: str, documents: list[str] | None, piece_chars: int = PIECE_CHARS) -> list[list[str]]:
    """Pieces of text to tokenise apart: whole documents grouped, or one text cut after newlines."""
    pieces: list[list[str]] = []
    if documents is not None:
        group, size = [], 0
        for doc in documents:
            group.append(doc)
            size += len(doc)
            if size >= piece_chars:
                pieces.append(group)
                group, size = [], 0
        if group:
            pieces.append(group)
        return pieces
    start = 0
    while start < len(text):
        end = min(len(text), start + piece_chars)
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        pieces.append([text[start:end]])
        start = end
    return pieces


def _encode_piece(args: tuple) -> tuple[int, int]:
    """Worker: tokenise one piece (documents separated by EOS when the tokenizer has one) into its shard file."""
    from lmlab.registry import TOKENIZER

    tok_name, tok_state, texts, is_documents, dtype, path = args
    tok = TOKENIZER.get(tok_name).from_dict(tok_state)
    eos = getattr(tok, "eos_id", None)
    parts = []
    for text in texts:
        fast = getattr(tok, "encode_array", None)
        parts.append(np.asarray(fast(text) if fast else tok.encode(text), dtype=np.int64))
        if is_documents and eos is not None:
            parts.append(np.array([eos], dtype=np.int64))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if ids.size and int(ids.max()) >= np.iinfo(dtype).max + 1:
        raise DataError(f"tokenizer: id {int(ids.max())} does not fit {np.dtype(dtype).name} token storage")
    ids.astype(dtype).tofile(path)
    return len(ids), os.getpid()


def build_shards(
    folder: Path,
    pieces: list[list[str]],
    tokenizer,
    dtype: np.dtype,
    *,
    workers: int,
    is_documents: bool,
    on_piece: Callable[[int, int], None] | None = None,
) -> dict:
    """Tokenise every piece into folder/shard_NNNNN.bin with `workers` processes; returns shard stats."""
    state = tokenizer.to_dict()
    # One-document corpora get no EOS at all: there is no boundary to mark.
    jobs = [
        (tokenizer.name, state, texts, is_documents, dtype, folder / f"shard_{i:05d}.bin")
        for i, texts in enumerate(pieces)
    ]
    t0 = time.perf_counter()
    counts, pids = [], set()
    with contextlib.ExitStack() as stack:
        mapper = map
        if workers > 1:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            mapper = stack.enter_context(pool).map
        for i, (n, pid) in enumerate(mapper(_encode_piece, jobs)):
            counts.append(n)
            pids.add(pid)
            if on_piece:
                on_piece(i + 1, len(jobs))
    return {"counts": counts, "seconds": time.perf_counter() - t0, "processes": len(pids)}


class ShardedTokens:
    """A read-only 1-D token array over several memmapped shards; `[a:b]` views, `[index_array]` gathers."""

    def __init__(self, paths: list[Path], counts: list[int], dtype: np.dtype, start: int = 0, stop: int | None = None):
        self.paths, self.counts, self.dtype = paths, counts, np.dtype(dtype)
        self._maps = None
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.start, self.stop = start, int(self.offsets[-1]) if stop is None else stop

    def _shards(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [
                np.memmap(p, dtype=self.dtype, mode="r") if n else np.zeros(0, self.dtype)
                for p, n in zip(self.paths, self.counts, strict=True)
            ]
        return self._maps

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            a, b, step = index.indices(len(self))
            if step != 1:
                raise IndexError("ShardedTokens: slices must be contiguous")
            return ShardedTokens(self.paths, self.counts, self.dtype, self.start + a, self.start + b)
        if isinstance(index, int | np.integer):  # a view's neighbours in the shards are not its tokens
            if not -len(self) <= index < len(self):
                raise IndexError(f"ShardedTokens index {index} out of range for {len(self)} tokens")
            index = int(index) % len(self)
        idx = np.asarray(index, dtype=np.int64) + self.start
        flat = idx.reshape(-1)
        which = np.searchsorted(self.offsets, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.dtype)
        shards = self._shards()
        for s in np.unique(which):
            sel = which == s
            out[sel] = shards[s][flat[sel] - self.offsets[s]]
        return out.reshape(idx.shape)

    def __array__(self, dtype=None, copy=None):
        # Only the shards the view overlaps are read.
        parts = [
            m[max(self.start - a, 0) : min(self.stop - a, len(m))]
            for m, a in zip(self._shards(), self.offsets[:-1].tolist(), strict=True)
            if a < self.stop and a + len(m) > self.start
        ]
        out = np.concatenate(parts) if parts else np.zeros(0, self.dtype)
        return out.astype(dtype) if dtype is not None else out

    def __iter__(self):
        return iter(np.asarray(self))

    def tolist(self) -> list[int]:
        """Every token id of the view (small views only)."""
        return np.asarray(self).tolist()

    @classmethod
    def open(cls, folder: Path) -> tuple[ShardedTokens, dict]:
        """The shards of a finished build and its manifest."""
        manifest = json.loads((folder / "manifest.json").read_text())
        paths = [folder / s["file"] for s in manifest["shards"]]
        for p, s in zip(paths, manifest["shards"], strict=True):
            size = p.stat().st_size if p.is_file() else -1
            if size != s["tokens"] * np.dtype(manifest["dtype"]).itemsize:
                raise DataError(f"data: token cache {folder} is damaged ({p.name}); delete the folder to rebuild it")
        return cls(paths, [s["tokens"] for s in manifest["shards"]], np.dtype(manifest["dtype"])), manifest


def publish(tmp: Path, folder: Path) -> None:
    """Rename a finished build into place (a concurrent builder that won keeps its copy)."""
    try:
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
