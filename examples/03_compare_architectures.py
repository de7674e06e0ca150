"""GPT-2 against RoPE, RMSNorm and SwiGLU through the Python API: the ablation `lmlab ablate` runs.

Each variant swaps one block of the base (and "all" swaps them together), trains for several
seeds at the same token budget, and the table reports the mean final validation loss with a
95% confidence interval, the difference to the base and a Welch p-value. Runs and the table go
to `--out`.

    python examples/03_compare_architectures.py [--seeds 3 --max-steps 300 --data pystdlib] [--tiny]
"""

from __future__ import annotations

import argparse

from lmlab.pipeline.ablate import markdown_table, run_ablation


def main() -> None:
    """Run the study and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--data", default="pystdlib", help="corpus: pystdlib (offline), shakespeare, file:PATH")
    ap.add_argument("--out", default="runs/example_ablation")
    ap.add_argument("--tiny", action="store_true", help="2 seeds, 4 steps, a 1-layer model (what the tests run)")
    args = ap.parse_args()
    overrides = {"data": {"name": args.data}, "train": {"max_steps": args.max_steps}}
    seeds = args.seeds
    if args.tiny:
        seeds = 2
        overrides["train"] = {"max_steps": 4, "eval_iters": 2, "batch_size": 4}
        overrides["model"] = {"n_layer": 1, "max_seq_len": 32}
    report = run_ablation(
        "gpt2", ["pos=rope", "norm=rmsnorm", "ffn=swiglu"], seeds=seeds, overrides=overrides, save_dir=args.out
    )
    print(markdown_table(report))
    best = min(report["rows"], key=lambda r: r["mean"])
    print(f"lowest mean validation loss: {best['variant']} ({best['arch']})")


if __name__ == "__main__":
    main()
