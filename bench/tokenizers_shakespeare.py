"""Char vs BPE on Tiny Shakespeare at the same wall-clock budget, compared in bits per character.

Both runs use the same body (GPT-2 layout, 4 layers, 4 heads, 128 dim, context 128, batch 16)
and the same number of seconds; only the tokenizer differs. Loss per token is not comparable
across tokenizers, so the table reports validation bits per character: nats/token / ln 2 x
(val tokens / val characters). Writes docs/results/tokenizers_shakespeare.md.

    LMLAB_DATA_DIR=../shared/data python bench/tokenizers_shakespeare.py [--seconds 240]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from lmlab.config import resolve_config
from lmlab.infer.evaluate import evaluate_run
from lmlab.pipeline.train import train_from_config

ARMS = {"char": {"tokenizer": "char"}, "bpe-2048": {"tokenizer": "bpe", "vocab_size": 2048}}


def main() -> None:
    """Train each arm for the same time, evaluate, write the Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--save-dir", default="/tmp/lmlab-bench-tokenizers")
    ap.add_argument("--out", default="docs/results/tokenizers_shakespeare.md")
    args = ap.parse_args()
    rows = []
    for name, data in ARMS.items():
        cfg = resolve_config(
            preset="gpt2",
            cli={
                "data": {"name": "shakespeare", **data},
                "model": {"n_layer": 4, "n_head": 4, "d_model": 128, "max_seq_len": 128, "dropout": 0.0},
                "train": {
                    "batch_size": 16,
                    "max_steps": 10**9,
                    "max_time": args.seconds,
                    "decay_steps": 3000,  # roughly the steps either arm reaches in the default budget
                    "warmup_steps": 100,
                    "lr": 1e-3,
                    "eval_interval": 500,
                    "eval_iters": 50,
                    "save_dir": args.save_dir,
                    "run_tag": name,
                    "sample_tokens": 0,
                    "progress": False,
                },
            },
        )
        result = train_from_config(cfg, quiet=True)
        ev = evaluate_run(result.run.path, iters=200, device="cpu")
        m = result.metrics
        rows.append(
            (name, m["step"], m["tokens"], m["wall"], ev["val_loss"], ev["bits_per_token"], ev["bits_per_char"])
        )
        print(rows[-1])
    lines = [
        f"Tiny Shakespeare, GPT-2 layout 4L-4H-128D, context 128 tokens, batch 16, {args.seconds:.0f} s of training each,"
        f" on {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads).",
        "",
        "| tokenizer | steps | tokens seen | wall s | val loss (nats/token) | bits/token | **bits/char** |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, steps, tokens, wall, loss, bpt, bpc in rows:
        lines.append(f"| {name} | {steps:,} | {tokens:,} | {wall:.0f} | {loss:.4f} | {bpt:.3f} | **{bpc:.3f}** |")
    lines += [
        "",
        f"Reproduce: `LMLAB_DATA_DIR=../shared/data python bench/tokenizers_shakespeare.py --seconds {args.seconds:.0f}`",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
