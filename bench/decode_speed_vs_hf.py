"""Decode speed: lmlab's KV-cached generation vs `transformers.generate` on the same exported weights.

One run, same machine, same weights (a GPT-2-layout model exported with `to_hf`), greedy
decoding of `--new` tokens after a `--prompt`-token prompt, at batch 1 and batch 8; each timing
is the best of `--repeats`. Reports tokens/s for both and the ratio lmlab / transformers.

    python bench/decode_speed_vs_hf.py [--layers 6 --dim 384 --heads 6 --new 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from lmlab.config import ModelConfig
from lmlab.export.hf import to_hf
from lmlab.infer.generate import generate
from lmlab.model.transformer import build_model


def best_of(fn, repeats: int) -> float:
    """Fastest wall time of `repeats` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Time both at batch 1 and 8 and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "gpt2", n_layer=args.layers, d_model=args.dim, n_head=args.heads, vocab_size=args.vocab, max_seq_len=512
    )
    ours = build_model(cfg).eval()
    theirs = to_hf(ours).eval()
    print(f"model {cfg.arch_name()} | {ours.num_params():,} params | {torch.get_num_threads()} threads")
    print("| batch | lmlab tok/s | transformers tok/s | ratio |\n| ---: | ---: | ---: | ---: |")
    for batch in (1, 8):
        prompt = torch.randint(0, args.vocab, (batch, args.prompt))
        with torch.no_grad():
            a = generate(ours, prompt, args.new, temperature=0)
            b = theirs.generate(prompt, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
        assert torch.equal(a, b), "greedy outputs differ"
        t_ours = best_of(lambda p=prompt: generate(ours, p, args.new, temperature=0), args.repeats)
        t_hf = best_of(
            lambda p=prompt: theirs.generate(p, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False),
            args.repeats,
        )
        n = batch * args.new
        print(f"| {batch} | {n / t_ours:,.0f} | {n / t_hf:,.0f} | {t_hf / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
