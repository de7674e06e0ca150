"""Regenerate the Results page (`docs/results.md`) from real runs on Tiny Shakespeare, in one command.

1. The ablation: GPT-2 against RoPE, RMSNorm and SwiGLU swapped in one at a time and all
   together, `--seeds` seeds each, `--max-steps` steps, budget matched on tokens; mean final
   validation loss with 95% CIs and Welch p-values; validation loss against tokens and FLOPs.
2. Training throughput against `transformers` (same weights, batches and AdamW; MFU against the
   measured matmul peak), from `bench/train_speed_vs_hf.py`.
3. Decode throughput against `transformers.generate` on the same weights, from
   `bench/decode_speed_vs_hf.py`.

Every section names the command that reproduces it and the page names the machine it ran on.

    LMLAB_DATA_DIR=../shared/data python bench/results_page.py [--seeds 3 --max-steps 300]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmarks

import decode_speed_vs_hf
import train_speed_vs_hf

from lmlab.data.sources import load_corpus
from lmlab.pipeline.ablate import markdown_table, run_ablation
from lmlab.track import compare
from lmlab.track.plots import plot_curves

ROOT = Path(__file__).resolve().parent.parent
SWAPS = ["pos=rope", "norm=rmsnorm", "ffn=swiglu"]


def machine() -> str:
    """CPU model, cores, torch build, date and commit, for the page's header."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu}, {os.cpu_count()} cores, GPU: {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; commit {commit.strip() or 'unknown'}; {dt.date.today().isoformat()}"
    )


def ablation_section(args, out: Path) -> list[str]:
    """Train the study and return its Markdown (table, per-seed losses, plots)."""
    t0 = time.perf_counter()
    overrides = {"data": {"name": "shakespeare"}, "train": {"max_steps": args.max_steps}}
    report = run_ablation("gpt2", SWAPS, seeds=args.seeds, overrides=overrides, save_dir=args.runs / "ablate")
    minutes = (time.perf_counter() - t0) / 60
    summaries = compare.compare([r for row in report["rows"] for r in row["runs"]])
    pngs = plot_curves(summaries, args.runs / "ablate" / "plots")
    for axis in ("tokens", "flops"):
        shutil.copy(pngs[axis], out / f"results_val_loss_vs_{axis}.png")
    cmd = (
        f"LMLAB_DATA_DIR=DIR lmlab ablate --base gpt2 {' '.join('--swap ' + s for s in SWAPS)} "
        f"--seeds {args.seeds} --max-steps {args.max_steps} --data shakespeare"
    )
    per_seed = ["| variant | final val loss per seed |", "| --- | --- |"]
    per_seed += [f"| {r['variant']} | {', '.join(f'{x:.4f}' for x in r['losses'])} |" for r in report["rows"]]
    return [
        "## Does RoPE + RMSNorm + SwiGLU beat GPT-2 at this budget?",
        "",
        f"The `gpt2` preset at ablate's laptop scale (4 layers, 4 heads, d_model 128, context 128, batch 16, "
        f"character-level Tiny Shakespeare), {args.max_steps} steps per run; {minutes:.1f} minutes for all runs.",
        "",
        f"```bash\n{cmd}\n```",
        "",
        markdown_table(report),
        *per_seed,
        "",
        "![validation loss vs tokens](results/results_val_loss_vs_tokens.png)",
        "",
        "![validation loss vs training FLOPs](results/results_val_loss_vs_flops.png)",
        "",
    ]


GPT2_LAYOUT = "-Learned-LN-GELU-PreNorm"
LAYOUT_NOTE = (
    "Models are the GPT-2 layout (learned positions, LayerNorm, GELU MLP, pre-norm) at the listed "
    "layers (L), heads (H) and width (D)."
)


def short(text: str) -> str:
    """An architecture label without the GPT-2 layout suffix every benchmark model shares (a narrow table)."""
    return text.replace(GPT2_LAYOUT, "")


def label(arch: str) -> str:
    """A table cell for an architecture: short, and in code so it never breaks at a hyphen."""
    return f"`{short(arch)}`"


def label_row(row: str) -> str:
    """A bench table row whose first cell, the architecture, becomes a `label`."""
    first, rest = row.removeprefix("| ").split(" | ", 1)
    return f"| {label(first)} | {rest}"


def training_speed_section(args) -> list[str]:
    """lmlab vs transformers training tokens/s and MFU."""
    peak = train_speed_vs_hf.cpu_matmul_peak(fresh=True, seconds=3.0)
    lines = [
        "## Training throughput against transformers",
        "",
        "Same weights, same batches, AdamW, float32; median of alternating rounds. MFU is against this "
        f"machine's measured float32 matmul peak ({peak / 1e9:.1f} GFLOP/s). {LAYOUT_NOTE}",
        "",
        f"```bash\npython bench/train_speed_vs_hf.py --rounds {args.rounds}\n```",
        "",
        "| size | model | params | lmlab tok/s | transformers tok/s | ratio | lmlab MFU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in ("baby", "small"):
        r = train_speed_vs_hf.bench(size, args.rounds, 10)
        lines.append(
            f"| {size} | {label(r['arch'])} | {r['params']:,} | {r['lmlab_tok_s']:,.0f} | {r['hf_tok_s']:,.0f} "
            f"| **{r['ratio']:.2f}x** | {100 * r['lmlab_tflops'] * 1e12 / peak:.1f}% |"
        )
        print(lines[-1], flush=True)
    return [*lines, ""]


def decode_speed_section(args) -> list[str]:
    """lmlab vs transformers.generate decode tokens/s."""
    opts = argparse.Namespace(vocab=2048, prompt=32, new=128, rounds=args.rounds)
    rows = []
    for layers, dim, heads in ((4, 128, 4), (6, 384, 6)):
        rows += decode_speed_vs_hf.bench_size(layers, dim, heads, opts)
    return [
        "## Decoding throughput against transformers",
        "",
        "Greedy KV-cached decoding of 128 tokens after a 32-token prompt, same weights exported with `to_hf`, "
        "outputs asserted equal. The GEMM floor is what the linear layers alone allow: every step reads all "
        f"weights once, through the same kernels for both libraries. {LAYOUT_NOTE}",
        "",
        f"```bash\npython bench/decode_speed_vs_hf.py --rounds {args.rounds}\n```",
        "",
        "| model | params | batch | lmlab tok/s | transformers tok/s | ratio | GEMM floor tok/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(label_row(row) for row in rows),
        "",
    ]


def main() -> None:
    """Run every section and write the page."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds for the speed tables")
    ap.add_argument("--runs", type=Path, default=Path("runs/results"), help="where the training runs go")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = ap.parse_args()
    load_corpus("shakespeare")  # fails fast, with the fix, when the corpus is not available offline
    (args.out.parent / "results").mkdir(parents=True, exist_ok=True)
    page = [
        "# Results",
        "",
        "Every figure on this page comes from one command, run on the machine below:",
        "",
        "```bash\nLMLAB_DATA_DIR=DIR python bench/results_page.py"
        + ("" if (args.seeds, args.max_steps) == (3, 300) else f" --seeds {args.seeds} --max-steps {args.max_steps}")
        + "\n```",
        "",
        f"where `DIR` holds `tinyshakespeare.txt`. Machine: {machine()}.",
        "",
    ]
    page += ablation_section(args, args.out.parent / "results")
    page += training_speed_section(args)
    page += decode_speed_section(args)
    page += [
        "## More",
        "",
        "- [Character vs BPE tokenizers at equal wall time](results/tokenizers_shakespeare.md)",
        "- [The first ablation, with per-step curves](results/ablation_gpt2.md)",
        "- [How attention cost grows with context: SDPA, sliding window, sparse NSA](results/attention_scaling.md)",
        "",
    ]
    args.out.write_text("\n".join(page))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
