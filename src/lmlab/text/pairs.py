"""Sentence pairs: file formats, the built-in English-French set, synthetic tasks, padded batches.

A batch is the seed's five arrays: `X_ids` (B, S) source ids ending in <eos>, `M_src` (B, S)
True on real tokens, `Y_in` (B, T) <bos> + target, `Y_out` (B, T) target + <eos> (the
next-token labels for Y_in), `M_tgt` (B, T) True where Y_out is a real token. Ids are int32.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from lmlab.errors import DataError
from lmlab.text.words import BOS_ID, EOS_ID, PAD_ID, Vocab

TASKS = ("copy", "reverse", "sort", "add")


def read_pairs(path: str | Path, fmt: str = "auto") -> list[tuple[str, str]]:
    """(source, target) pairs of a TSV, CSV or Tatoeba (`eng<TAB>fra<TAB>attribution`) file.

    Lines starting with `#` and blank lines are skipped; any other line without two non-empty
    fields is an error naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pairs: {path} does not exist")
    if fmt == "auto":
        fmt = "csv" if path.suffix.lower() == ".csv" else "tsv"
    if fmt not in ("tsv", "csv", "tatoeba"):
        raise DataError(f"pairs: format '{fmt}'; allowed: auto, tsv, csv, tatoeba")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"pairs: {path} is not UTF-8 (byte {exc.start})") from None
    rows = csv.reader(lines) if fmt == "csv" else (line.split("\t") for line in lines)
    pairs = []
    for lineno, (line, row) in enumerate(zip(lines, rows, strict=True), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            sep = "comma" if fmt == "csv" else "tab"
            raise DataError(
                f"pairs: {path}:{lineno}: expected source and target separated by a {sep}, got {line[:60]!r}"
            )
        pairs.append((row[0].strip(), row[1].strip()))
    if not pairs:
        raise DataError(f"pairs: {path} holds no pairs")
    return pairs


def builtin_pairs(name: str = "enfr") -> list[tuple[str, str]]:
    """A pair set shipped with lmlab; `enfr` is about 100 short English-French sentences."""
    ref = resources.files("lmlab.text.data") / f"{name}.tsv"
    if not ref.is_file():
        raise DataError(f"pairs: no built-in set '{name}'; allowed: enfr")
    with resources.as_file(ref) as path:
        return read_pairs(path)


def load_pairs(spec: str) -> list[tuple[str, str]]:
    """Pairs by name: `enfr` (built in), `task:NAME[:N]` (synthetic), or a file path."""
    if spec.startswith("task:"):
        _, task, *n = spec.split(":")
        return synthetic_pairs(task, int(n[0]) if n else 2000)
    if spec in ("enfr", "builtin:enfr"):
        return builtin_pairs("enfr")
    return read_pairs(spec.removeprefix("file:"))


def synthetic_pairs(
    task: str, n: int, *, min_len: int = 3, max_len: int = 8, n_symbols: int = 10, seed: int = 0
) -> list[tuple[str, str]]:
    """`copy`, `reverse`, `sort` of random digit strings, or `add` of two numbers, as space-separated text."""
    if task not in TASKS:
        raise DataError(f"task: '{task}'; allowed: {', '.join(TASKS)}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        if task == "add":
            a, b = (rng.randrange(10 ** rng.randint(1, max(1, max_len // 2))) for _ in range(2))
            pairs.append((" ".join(f"{a}+{b}"), " ".join(str(a + b))))
            continue
        seq = [str(rng.randrange(n_symbols)) for _ in range(rng.randint(min_len, max_len))]
        out = {"copy": seq, "reverse": seq[::-1], "sort": sorted(seq, key=int)}[task]
        pairs.append((" ".join(seq), " ".join(out)))
    return pairs


def encode_pairs(pairs: list[tuple[str, str]], src: Vocab, tgt: Vocab) -> list[tuple[list[int], list[int]]]:
    """Source ids + <eos>, and target ids (no specials: `make_batch` adds <bos>/<eos>)."""
    return [(src.encode(s, eos=True), tgt.encode(t)) for s, t in pairs]


def make_batch(examples: list[tuple[list[int], list[int]]]) -> dict[str, np.ndarray]:
    """Right-padded X_ids, M_src, Y_in, Y_out, M_tgt for a list of (source ids, target ids)."""
    S = max(len(s) for s, _ in examples)
    T = max(len(t) for _, t in examples) + 1
    B = len(examples)
    X = np.full((B, S), PAD_ID, dtype=np.int32)
    Y_in = np.full((B, T), PAD_ID, dtype=np.int32)
    Y_out = np.full((B, T), PAD_ID, dtype=np.int32)
    for b, (s, t) in enumerate(examples):
        X[b, : len(s)] = s
        Y_in[b, : len(t) + 1] = [BOS_ID, *t]
        Y_out[b, : len(t) + 1] = [*t, EOS_ID]
    return {"X_ids": X, "M_src": X != PAD_ID, "Y_in": Y_in, "Y_out": Y_out, "M_tgt": Y_out != PAD_ID}


def batches(
    examples: list[tuple[list[int], list[int]]], batch_size: int, *, shuffle: bool = True, seed: int = 0
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of padded batches (shuffled with `seed`)."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for i in range(0, len(order), batch_size):
        yield make_batch([examples[j] for j in order[i : i + batch_size]])


def save_examples(path: str | Path, examples: list[tuple[list[int], list[int]]]) -> None:
    """Tokenised pairs as .npz (ragged sequences stored flat with offsets)."""
    src, tgt = ([np.asarray(e[k], dtype=np.int32) for e in examples] for k in (0, 1))
    np.savez(
        path,
        src=np.concatenate(src),
        src_off=np.cumsum([0] + [len(x) for x in src]),
        tgt=np.concatenate(tgt),
        tgt_off=np.cumsum([0] + [len(x) for x in tgt]),
    )


def load_examples(path: str | Path) -> list[tuple[list[int], list[int]]]:
    """Tokenised pairs written by `save_examples`."""
    z = np.load(path)
    so, to = z["src_off"], z["tgt_off"]
    return [(z["src"][so[i] : so[i + 1]].tolist(), z["tgt"][to[i] : to[i + 1]].tolist()) for i in range(len(so) - 1)]
