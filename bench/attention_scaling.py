"""How attention cost grows with context: full causal SDPA, the blocked sliding window, sparse NSA.

The attention layer of a Llama-style model (4 query heads sharing 1 key/value head, as NSA's GQA
groups do; head dim 32; RoPE; batch 1), forward + backward, T = 512 .. 8192. Each (attention, T)
point's peak memory (resident set above the model's own, after import) is measured in its own
process; times are the best of `--rounds`, with the arms taking turns in one process per length.
NSA uses the paper's sizes (Yuan et al. 2025, §4: compression block l = 32, stride d = 16,
selection block l' = 64, n = 16 selected blocks, window w = 512), with each query choosing its own
blocks (the paper) and with the queries of a selection block sharing one choice (`nsa.selection:
block`); the sliding window is w = 256. Also runs the dense NSA reference up to `--reference-max` to
show what the sparse gathers save. Prints a Markdown table, writes it and a PNG.

    python bench/attention_scaling.py [--rounds 5] [--out docs/results/attention_scaling]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

PAPER = {"block_size": 32, "stride": 16, "select_block": 64, "n_select": 16, "window": 512}
ARMS = {
    "sdpa": {"attn": "sdpa"},
    "sliding_window w=256": {"attn": "sliding_window", "window": 256},
    "native_sparse, block selection": {"attn": "native_sparse", "nsa": {**PAPER, "selection": "block"}},
    "native_sparse, query selection": {"attn": "native_sparse", "nsa": PAPER},
    "native_sparse_reference": {"attn": "native_sparse_reference", "nsa": PAPER},
}
LENGTHS = (512, 1024, 2048, 4096, 8192)

CHILD = r"""
import json, resource, sys, time
import torch
from lmlab.config import ModelConfig
from lmlab.model.build import build_model

arm, T, rounds = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
cfg = ModelConfig.from_preset(
    "llama", n_layer=1, n_head=4, n_kv_head=1, d_model=128, vocab_size=256, max_seq_len=T, dropout=0.0, **arm
)
model = build_model(cfg)
attn = model.blocks[0].attn  # the attention layer alone: what differs between the arms
x = torch.randn(1, T, cfg.d_model, requires_grad=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best = float("inf")
for _ in range(rounds):
    attn.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    attn(x, pos=model.pos.context(T, 0, x.device)).square().mean().backward()
    best = min(best, time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"seconds": best, "peak_mib": peak / 1024}))
"""


# Times, in one process per length: the arms take turns each round, so that a slow spell of the machine
# falls on all of them alike and the ratios stay fair.
TIMER = r"""
import json, sys, time
import torch
from lmlab.config import ModelConfig
from lmlab.model.build import build_model

arms, T, rounds = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
layers = {}
for name, arm in arms.items():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "llama", n_layer=1, n_head=4, n_kv_head=1, d_model=128, vocab_size=256, max_seq_len=T, dropout=0.0, **arm
    )
    model = build_model(cfg)
    layers[name] = (model.blocks[0].attn, model.pos)
x = torch.randn(1, T, 128, requires_grad=True)
best = dict.fromkeys(arms, float("inf"))
for _ in range(rounds + 1):  # the first round warms up
    for name, (attn, pos) in layers.items():
        attn.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        attn(x, pos=pos.context(T, 0, x.device)).square().mean().backward()
        best[name] = min(best[name], time.perf_counter() - t0) if _ else best[name]
print(json.dumps(best))
"""


def timed(arms: dict[str, dict], T: int, rounds: int) -> dict[str, float]:
    """Best forward+backward seconds of each arm at length T, the arms alternating round by round."""
    proc = subprocess.run(
        [sys.executable, "-c", TIMER, json.dumps(arms), str(T), str(rounds)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_version() -> str:
    """The torch the child processes import."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    )
    return out.stdout.strip()


def measure(arm: dict, T: int, rounds: int) -> dict:
    """Best forward+backward seconds and peak MiB of one (attention, T) point, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(arm), str(T), str(rounds)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict[int, dict]]) -> str:
    """Markdown: ms per forward+backward, ms per 1k tokens, and peak MiB, per length."""
    lines = [
        "| attention | " + " | ".join(f"T={T}" for T in LENGTHS) + " |",
        "| --- | " + " | ".join("---" for _ in LENGTHS) + " |",
    ]
    for name, points in results.items():
        cells = []
        for T in LENGTHS:
            p = points.get(T)
            cells.append(
                ""
                if p is None
                else f"{1000 * p['seconds']:,.0f} ms ({1e6 * p['seconds'] / T:,.0f} ms/1k tok), "
                f"{p['peak_mib']:,.0f} MiB"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict[int, dict]], path: Path) -> None:
    """Time and peak memory against T, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in results.items():
        Ts = sorted(points)
        ax_t.plot(Ts, [points[T]["seconds"] * 1000 for T in Ts], marker="o", label=name)
        ax_m.plot(Ts, [max(points[T]["peak_mib"], 1) for T in Ts], marker="o", label=name)
    for ax, label in ((ax_t, "ms per forward + backward"), (ax_m, "peak MiB (above the model)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context T (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle(
        "attention layer, 4 query heads x 32 (GQA, 1 kv head), batch 1, fp32 on "
        + (platform.processor() or platform.machine())
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    """Measure every arm at every length, then print and write the table and the plot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reference-max", type=int, default=4096, help="longest T for the dense NSA reference")
    ap.add_argument("--out", default="docs/results/attention_scaling")
    args = ap.parse_args()
    results: dict[str, dict[int, dict]] = {name: {} for name in ARMS}
    for T in LENGTHS:
        arms = {n: a for n, a in ARMS.items() if n != "native_sparse_reference" or args.reference_max >= T}
        seconds = timed(arms, T, args.rounds)
        for name, arm in arms.items():
            point = {"seconds": seconds[name], "peak_mib": measure(arm, T, 1)["peak_mib"]}
            results[name][T] = point
            print(f"{name:26s} T={T:5d}  {1000 * point['seconds']:9.1f} ms  {point['peak_mib']:8.1f} MiB", flush=True)
    sdpa, swa, nsa, nsa_q = (results[n] for n in list(ARMS)[:4])
    ratios = [
        f"sliding window vs sdpa at T=4096: {sdpa[4096]['seconds'] / swa[4096]['seconds']:.2f}x faster",
        "sliding window time per token, each doubling of T from 1024: "
        + ", ".join(f"{(swa[2 * T]['seconds'] / (2 * T)) / (swa[T]['seconds'] / T):.2f}x" for T in LENGTHS[1:-1]),
        f"native_sparse (block selection) vs sdpa at T=8192: {sdpa[8192]['seconds'] / nsa[8192]['seconds']:.2f}x "
        f"faster; with query selection {sdpa[8192]['seconds'] / nsa_q[8192]['seconds']:.2f}x",
        "native_sparse (block selection) peak memory, each doubling of T: "
        + ", ".join(f"{nsa[2 * T]['peak_mib'] / max(nsa[T]['peak_mib'], 1):.2f}x" for T in LENGTHS[:-1]),
    ]
    out = Path(args.out)
    md = "\n".join(
        [
            "# How attention cost grows with context",
            "",
            "The attention layer alone (4 query heads sharing 1 key/value head, head dim 32, RoPE, batch 1, fp32),",
            "forward + backward, best of "
            f"{args.rounds} rounds with the attentions taking turns; peak memory is the resident set above the model's, each point in its own",
            f"process. Machine: {platform.processor() or platform.machine()}, torch {torch_version()}. NSA uses the",
            "paper's sizes (l = 32, d = 16, l' = 64, n = 16, w = 512); with query selection each query picks its",
            "own blocks, as in the paper, and with block selection the queries of each 64-token block share the",
            "choice of its first query, so the chosen keys are read once per block. The sliding window is w = 256.",
            "",
            "```bash",
            "python bench/attention_scaling.py",
            "```",
            "",
            table(results),
            "",
            *(f"- {r}" for r in ratios),
            "",
            f"![time and peak memory against context]({out.name}.png)",
            "",
        ]
    )
    print("\n" + md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
