"""Tokenisation throughput of `lmlab prepare`: all cores vs one process, same tokenizer, same corpus.

    python bench/prepare_throughput.py [--mb 100] [--tokenizer bpe]

Writes a synthetic corpus (random words over a mixed-script vocabulary, one document per
line group), trains the tokenizer once, then builds the shard cache with 1 process and with
one per core, each into a fresh cache, and reports MB/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from lmlab.data.datasets import prepare_tokens
from lmlab.data.sources import load_corpus
from lmlab.data.tokenizers.base import build_tokenizer


def synthetic_corpus(path: Path, mb: int, seed: int = 0) -> None:
    """About `mb` MB of word salad with punctuation, digits and a few non-ASCII words."""
    rng = random.Random(seed)
    syll = ["ka", "to", "ri", "en", "sa", "mu", "lo", "ve", "qui", "dr", "ç", "ä", "ñ", "ø", "ß", "日本", "θ"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(20_000)]
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < mb * 1_000_000:
            line = " ".join(rng.choice(words) for _ in range(rng.randint(5, 20)))
            line += (
                rng.choice([".", ",", "!", "?", ";"])
                + (f" {rng.randint(0, 9999)}" if rng.random() < 0.1 else "")
                + "\n"
            )
            f.write(line)
            written += len(line.encode())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--tokenizer", default="bpe")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        synthetic_corpus(path, args.mb)
        corpus = load_corpus(f"file:{path}")
        t0 = time.perf_counter()
        tok = build_tokenizer(args.tokenizer, corpus.text, vocab_size=4096)
        print(
            f"corpus {len(corpus.text.encode()) / 1e6:.1f} MB | {args.tokenizer} trained in {time.perf_counter() - t0:.1f} s"
        )
        results = {}
        for workers in (1, os.cpu_count() or 1):
            splits = prepare_tokens(corpus, tok, Path(tmp) / f"cache{workers}", 0.01, workers=workers)
            m = splits.meta
            results[workers] = m["mb_per_s"]
            print(
                f"workers {workers}: {m['mb_per_s']:.2f} MB/s ({m['build_seconds']:.1f} s, "
                f"{m['processes']} processes, {m['n_tokens']:,} tokens, {len(m['shards']) if 'shards' in m else ''})"
            )
        many = max(results)
        print(f"speed-up with {many} processes: {results[many] / results[1]:.2f}x")


if __name__ == "__main__":
    main()
