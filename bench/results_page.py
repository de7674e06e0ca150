"""Regenerate the Results page (`docs/results.md`) from real runs on Tiny Shakespeare, in one command.

1. The ablation: GPT-2 against RoPE, RMSNorm and SwiGLU swapped in one at a time and all
   together, `--seeds` seeds each, `--max-steps` steps, budget matched on tokens; mean final
   validation loss with 95% CIs and Welch p-values; validation loss against tokens and FLOPs.
2. Training throughput against `transformers` (same weights, batches and AdamW; MFU against the
   measured matmul peak), from `bench/train_speed_vs_hf.py`.
3. Decode throughput against `transformers.generate` on the same weights, eager and compiled, against
   the GEMM floor, and speculative decoding with a trained draft, from `bench/decode_speed_vs_hf.py`.
4. A study serially and with two jobs against the ideal, from `bench/study_parallel.py`.

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
import study_parallel
import train_speed_vs_hf

from lmlab.data.sources import load_corpus
from lmlab.docgen import HIDE_TOC
from lmlab.pipeline.ablate import markdown_table, run_ablation
from lmlab.pipeline.scale import markdown_report, run_scaling
from lmlab.track import compare
from lmlab.track.plots import plot_curves

ROOT = Path(__file__).resolve().parent.parent
SWAPS = ["pos=rope", "norm=rmsnorm", "ffn=swiglu"]
# Lion at its authors' advice: a 5x smaller learning rate and a 5x larger decay than AdamW's; Muon at its defaults.
OPTIM_SWAPS = ["optim=lion+lr=4e-4+min_lr=4e-5+weight_decay=0.5", "optim=muon"]
# The ladder: 2 layers, 16-wide heads, four widths at 10 tokens per non-embedding parameter (minutes, not hours).
SCALE = {"widths": [32, 48, 64, 96], "tokens_per_param": 10.0, "seeds": 2, "swap": "ffn=mlp+activation=gelu"}


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


def per_seed_table(report: dict) -> list[str]:
    """Each variant's final validation loss per seed, as Markdown rows."""
    rows = ["| variant | final val loss per seed |", "| --- | --- |"]
    return rows + [f"| {r['variant']} | {', '.join(f'{x:.4f}' for x in r['losses'])} |" for r in report["rows"]]


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
    per_seed = per_seed_table(report)
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


def optimizer_section(args) -> list[str]:
    """AdamW (the tiny preset's own) against Lion and Muon: the study and its Markdown."""
    t0 = time.perf_counter()
    overrides = {"data": {"name": "shakespeare"}, "train": {"max_steps": args.max_steps}}
    report = run_ablation("tiny", OPTIM_SWAPS, seeds=args.seeds, overrides=overrides, save_dir=args.runs / "optim")
    return optimizer_markdown(report, (time.perf_counter() - t0) / 60, args.seeds, args.max_steps)


def optimizer_markdown(report: dict, minutes: float, seeds: int, max_steps: int) -> list[str]:
    """The optimizer study's section of the page, from its report."""
    cmd = (
        f"LMLAB_DATA_DIR=DIR lmlab ablate --base tiny {' '.join('--swap ' + s for s in OPTIM_SWAPS)} "
        f"--seeds {seeds} --max-steps {max_steps} --data shakespeare"
    )
    # Short arm names keep the table narrow; the command above spells each arm's settings out.
    names = {"base": "adamw (base)", OPTIM_SWAPS[0]: "lion", OPTIM_SWAPS[1]: "muon"}
    report = {**report, "rows": [{**r, "variant": names.get(r["variant"], r["variant"])} for r in report["rows"]]}
    rows = {r["variant"]: r for r in report["rows"]}
    base, muon = rows["adamw (base)"], rows["muon"]
    arms = report["rows"][1:]
    per_seed = per_seed_table(report)
    return [
        "## Which optimizer: AdamW, Lion or Muon?",
        "",
        f"The `tiny` preset (AdamW at lr 2e-3, the base) on character-level Tiny Shakespeare, {max_steps} steps "
        f"per run, the same tokens for every arm; {minutes:.1f} minutes for all runs. Lion runs at its authors' "
        "advice (a 5x smaller learning rate, a 5x larger decay); Muon at its defaults (lr 0.02, momentum 0.95, "
        "Nesterov, 5 Newton-Schulz steps) for the blocks' matrices, AdamW at the base's settings for the rest. "
        "No arm's learning rate was tuned here.",
        "",
        f"```bash\n{cmd}\n```",
        "",
        markdown_table(report),
        *per_seed,
        "",
        f"Per step, Muon costs {muon['ms_per_step'] / base['ms_per_step']:.2f}x AdamW's wall time on this machine "
        f"({muon['ms_per_step']:.0f} against {base['ms_per_step']:.0f} ms, evaluations included), so its "
        f"difference per step ({muon['diff_vs_base']:+.4f}) is not the same as its difference per second.",
        "",
        f"Distinguishable from AdamW at p < 0.05 with {seeds} seeds: "
        + (", ".join(f"{r['variant']} ({r['diff_vs_base']:+.4f})" for r in arms if r["p"] < 0.05) or "none")
        + "; not distinguishable: "
        + (", ".join(f"{r['variant']} (p = {r['p']:.2g})" for r in arms if r["p"] >= 0.05) or "none")
        + ".",
        "",
    ]


def scaling_section(args, figures: Path) -> list[str]:
    """The llama ladder against a GELU MLP on Tiny Shakespeare: the study, its plot and its Markdown."""
    overrides = {"data": {"name": "shakespeare"}, "model": {"n_layer": 2, "n_head": 8}}
    report = run_scaling(
        "llama",
        SCALE["widths"],
        swaps=[SCALE["swap"]],
        tokens_per_param=SCALE["tokens_per_param"],
        seeds=SCALE["seeds"],
        overrides=overrides,
        save_dir=args.runs / "scale",
    )
    shutil.copy(report["plot"], figures / "scaling_llama.png")
    return scaling_markdown(report)


def scaling_markdown(report: dict) -> list[str]:
    """The scaling ladder's section of the page, from its report."""
    cmd = (
        f"LMLAB_DATA_DIR=DIR lmlab scale --base llama --widths {','.join(map(str, SCALE['widths']))} "
        f"--tokens-per-param {SCALE['tokens_per_param']:g} --swap {SCALE['swap']} --seeds {SCALE['seeds']} "
        "--layers 2 --heads 8 --data shakespeare"
    )
    crossed, fits = report["crossings"][0], {f["variant"]: f for f in report["fits"]}
    base, swap = fits["base"], fits[SCALE["swap"]]
    low = min(p["compute"] for p in report["points"])
    if crossed["at"] is None:
        verdict = "The fitted curves do not cross in the range searched."
    else:
        beyond = "the base" if base["predicted"] < swap["predicted"] else "the swap"
        verdict = (
            f"The fitted curves cross at {crossed['at']:.3g} FLOPs ({crossed['at'] / low:.1f}x the smallest rung's "
            f"compute; {100 * crossed['share']:.0f}% of the bootstrap refits cross too); above it {beyond} is lower."
        )
    apart = base["predicted_ci"][1] < swap["predicted_ci"][0] or swap["predicted_ci"][1] < base["predicted_ci"][0]
    verdict += (
        f" At {base['predicted_at']:.3g} FLOPs (10x the ladder) the fits predict {base['predicted']:.3f} for the base "
        f"and {swap['predicted']:.3f} for the GELU MLP; their intervals " + ("do not overlap." if apart else "overlap.")
    )
    return [
        "## Does it hold at scale? A ladder of widths",
        "",
        "The `llama` preset (SwiGLU) against a GELU MLP, each trained at four widths with 2 layers, 16-wide heads, "
        "context 128 and batch 16 on character-level Tiny Shakespeare, tokens in proportion to the non-embedding "
        "parameters, warm-up capped at a tenth of each run and the cosine over each run's own length. One "
        "power law L(C) = E + A·C^-α is fitted per variant.",
        "",
        f"```bash\n{cmd}\n```",
        "",
        markdown_report(report),
        "![loss against compute with the fits](results/scaling_llama.png)",
        "",
        f"{verdict} A ladder of four widths at two seeds fits three parameters from eight points: read the "
        "exponents' intervals before the extrapolation, and treat intervals from two seeds per width as a lower "
        "bound on the uncertainty.",
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


def depth_width(arch: str) -> str:
    """`4L-128D` from `4L-4H-128D-...`: the decode table's narrow model cell."""
    layers, _, width = arch.split("-")[:3]
    return f"`{layers}-{width}`"


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
    """lmlab (eager and compiled) vs transformers.generate decode tokens/s, against the GEMM floor."""
    opts = argparse.Namespace(vocab=2048, prompt=32, new=128, rounds=args.rounds)
    results = []
    for layers, dim, heads in ((4, 128, 4), (6, 384, 6)):
        results += decode_speed_vs_hf.bench_size(layers, dim, heads, opts)
    rows = [
        f"| {depth_width(r['arch'])} | {r['batch']} | {r['eager']:,.0f} "
        f"| {r['compiled']:,.0f} ({r['compiled'] / r['floor']:.0%}) | {r['hf']:,.0f} "
        f"| **{r['compiled'] / r['hf']:.2f}x** | {r['floor']:,.0f} |"
        for r in results
    ]
    eager = ", ".join(f"{r['eager'] / r['hf']:.2f}x" for r in results)
    compile_s = ", ".join(f"{r['compile_s']:.1f} s" for r in results)
    return [
        "## Decoding throughput against transformers",
        "",
        "Greedy KV-cached decoding of 128 tokens after a 32-token prompt, same weights exported with `to_hf`, "
        "outputs asserted equal (eager, compiled and transformers). The GEMM floor is what the linear layers "
        "alone allow: every step reads all weights once, through the same kernels for both libraries. "
        '"--compile" is static caches with a compiled decode step; its compile time is paid once per process '
        f"and batch size. {LAYOUT_NOTE}",
        "",
        f"```bash\npython bench/decode_speed_vs_hf.py --rounds {args.rounds}\n```",
        "",
        "| model | batch | eager | compiled | transformers | compiled / HF | floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "Tokens per second. The percentages are the compiled speed's share of the GEMM floor, measured in every "
        "round beside the decoders. The floor calls the linear layers through the BLAS library one by one, so a "
        "compiled step that runs them as generated loops (what it does on CPU) can pass it. From a step's third "
        "call on, CPU decoding replays the step's recorded kernels on the same buffers (`lmlab.model."
        "kernel_replay`, the CPU counterpart of a CUDA graph), so a step costs its kernels, not Dynamo's entry "
        f"and inductor's wrapper. Eager lmlab is {eager} transformers in the same rows. Compiling took "
        f"{compile_s}.",
        "",
    ]


def speculative_section(args, text: str) -> list[str]:
    """Plain against speculative decoding of a trained 6L-384D model with a trained 2-layer draft."""
    opts = argparse.Namespace(
        prompt=32, new=128, rounds=args.rounds, train_steps=2000, draft_train_steps=3000, train_batch=8,
        lr=2e-3, cache="~/.cache/lmlab/bench", draft_dim=128, draft_tokens="3,4,6",
    )  # fmt: skip
    rows = decode_speed_vs_hf.bench_speculative(text, opts)
    return [
        "Speculative decoding of a 6L-384D character model with a 2-layer, 128-wide draft, both trained here on "
        "the same Shakespeare text (2,000 and 3,000 steps of 8 full 160-character contexts), greedy, batch 1. "
        "Greedy outputs are checked equal to plain greedy's. Each row is compared with plain decoding in the "
        "same mode (eager or `--compile`):",
        "",
        "```bash\npython bench/decode_speed_vs_hf.py --sizes none --speculative --text DIR/tinyshakespeare.txt "
        f"--rounds {args.rounds}\n```",
        "",
        "| decoding | tok/s | vs plain (same mode) | draft acceptance |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
    ]


def study_section() -> list[str]:
    """A 2-variant x 3-seed ablation serially, with two jobs, and the ideal."""
    m = study_parallel.measure(jobs=2, threads=1, steps=100, seeds=3, data=None)
    return [
        "## Studies in parallel",
        "",
        "A 2-variant x 3-seed ablation at laptop scale (GPT-2 against RoPE, 4L-4H-128D, context 128, batch 16, "
        "100 steps each) on the built-in corpus, trained three ways in one run of the bench:",
        "",
        "```bash\npython bench/study_parallel.py --jobs 2 --threads-per-job 1 --steps 100 --seeds 3\n```",
        "",
        *study_parallel.table(m),
        "",
        f"The two studies report the same table; their final losses differ by at most {m['max_loss_diff']:.2g} "
        "(the serial runs use every core, and torch splits large reductions by thread count; with the same "
        "threads per run they are equal bit for bit, as the tests check).",
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
    shakespeare = load_corpus("shakespeare").text  # fails fast, with the fix, when it is not available offline
    (args.out.parent / "results").mkdir(parents=True, exist_ok=True)
    page = [
        *HIDE_TOC,  # the wide tables take the contents column's width
        "# Results",
        "",
        "Every section names the command that measured it. One command runs them all and rewrites this page,",
        "on the machine below:",
        "",
        "```bash\nLMLAB_DATA_DIR=DIR python bench/results_page.py"
        + ("" if (args.seeds, args.max_steps) == (3, 300) else f" --seeds {args.seeds} --max-steps {args.max_steps}")
        + "\n```",
        "",
        f"where `DIR` holds `tinyshakespeare.txt`. Machine: {machine()}.",
        "",
    ]
    page += ablation_section(args, args.out.parent / "results")
    page += optimizer_section(args)
    page += scaling_section(args, args.out.parent / "results")
    page += training_speed_section(args)
    page += decode_speed_section(args)
    page += speculative_section(args, shakespeare)
    page += study_section()
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
