"""Train tokens/s and val loss at a fixed token budget on Tiny Shakespeare, one attention/FFN block at a time.

Every variant shares a LLaMA-style body (4 layers, 4 heads, 128 dim, RoPE, RMSNorm, SwiGLU,
context 128, batch 16) and the same data order; only the named block changes. Run one after
another in one process on the same machine.

    LMLAB_DATA_DIR=../shared/data python bench/blocks_shakespeare.py [--steps 600]
"""

from __future__ import annotations

import argparse
import time

from lmlab.config import resolve_config
from lmlab.model.cost import active_params, params_by_component
from lmlab.pipeline.train import train_from_config

VARIANTS = {
    "mha": {"attn": "mha"},
    "sdpa": {"attn": "sdpa"},
    "mla": {"attn": "mla", "mla": {"kv_lora_rank": 64, "qk_rope_head_dim": 16}},
    "nsa": {"attn": "nsa", "nsa": {"block_size": 16, "stride": 8, "select_block": 16, "n_select": 4, "window": 32}},
    "sliding_window": {"attn": "sliding_window", "window": 32},
    "moe": {"ffn": "moe", "moe": {"n_experts": 4, "top_k": 1, "d_expert": 176}},
}


def main() -> None:
    """Train each variant for the same number of tokens and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--save-dir", default="/tmp/lmlab-bench-blocks")
    args = parser.parse_args()
    rows = []
    for name in args.variants.split(","):
        cfg = resolve_config(
            preset="tiny",
            cli={
                "model": {"max_seq_len": 128, **VARIANTS[name]},
                "data": {"name": "shakespeare"},
                "train": {
                    "max_steps": args.steps,
                    "batch_size": 16,
                    "eval_interval": args.steps,
                    "eval_iters": 100,
                    "save_dir": args.save_dir,
                    "run_tag": name,
                    "progress": False,
                    "sample_tokens": 0,
                    "lr": 2e-3,
                    "min_lr": 2e-4,
                },
            },
        )
        t0 = time.perf_counter()
        result = train_from_config(cfg, quiet=True)
        wall = time.perf_counter() - t0
        model_cfg = result.run.config().model
        params = params_by_component(model_cfg)
        tokens = result.metrics["tokens"]
        rows.append(
            (
                name,
                model_cfg.arch_name(),
                sum(params.values()),
                active_params(model_cfg, params),
                tokens / wall,
                result.metrics["val_loss"],
                wall,
            )
        )
        print(f"{name} done in {wall:.0f}s", flush=True)
    print(f"\n{'block':<16}{'arch':<44}{'params':>10}{'active':>10}{'tok/s':>9}{'val loss':>10}{'wall s':>8}")
    for name, arch, p, a, tps, loss, wall in rows:
        print(f"{name:<16}{arch:<44}{p:>10,}{a:>10,}{tps:>9,.0f}{loss:>10.4f}{wall:>8.0f}")
    print(f"\ntokens per run: {tokens:,} ({args.steps} steps x 16 x 128)")


if __name__ == "__main__":
    main()
