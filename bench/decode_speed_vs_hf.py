"""Decode speed: lmlab's KV-cached generation vs `transformers.generate` on the same exported weights.

One run, same machine, same weights (GPT-2-layout models exported with `to_hf`), greedy decoding
of `--new` tokens after a `--prompt`-token prompt, at batch 1 and batch 8, for each `--sizes`
entry (LAYERSxDIMxHEADS). lmlab (eager, and with `compile=True`: static caches and a compiled
decode step) and transformers take turns for `--rounds` rounds and the median time of each is
reported, with the ratios to transformers; the compile time is the first compiled run's extra time.

The "GEMM floor" column is the tokens/s the model's linear layers alone allow: every decode
step must read all weights once, and at batch 1 that matrix-vector work is memory-bound, the
same kernels for both libraries. It bounds any ratio: lmlab's speed-up can only come from
everything around those kernels.

`--speculative` adds speculative decoding: a 6L/384D model and a 2-layer draft trained here on the same
characters of `--text` (`--train-steps` and `--draft-train-steps`; kept in `--cache`, so a second run
only decodes), then greedy decoding of the big model alone (eager and compiled) against the big model
with the draft proposing `--draft-tokens` tokens per pass (eager and compiled), with the acceptance
rate. Speculative and plain greedy outputs are checked equal.

`--remote-code` adds lmlab compositions that transformers has no class for (MLA, ALiBi, a windowed GPT-2
layout), exported with `modeling_lmlab.py`: lmlab's eager decode against the export's `generate` with its
cache, and without (`use_cache=False`, what the export did before it had one), outputs checked equal.

    python bench/decode_speed_vs_hf.py [--sizes 4x128x4,6x384x6 --new 128 --rounds 5] [--out FILE.md]
    python bench/decode_speed_vs_hf.py --sizes none --remote-code
    python bench/decode_speed_vs_hf.py --sizes none --speculative --text ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from lmlab.config import ModelConfig
from lmlab.export.hf import to_hf
from lmlab.model.build import build_model
from lmlab.model.generate import generate
from lmlab.model.speculative import DraftStats
from lmlab.pipeline.export import _write_remote_code
from lmlab.runs.checkpoint import load_weights, read_weights, write_weights
from lmlab.trainer.optim import configure_optimizer
from lmlab.trainer.schedules import warmup_cosine_scheduler


def timed(fn) -> float:
    """Wall time of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gemm_floor(model, batch: int, steps: int) -> float:
    """Seconds for `steps` decode steps' worth of the model's linear layers alone (batch rows each)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(batch, m.in_features) for m in linears]

    def run() -> None:
        for _ in range(steps):
            for m, x in zip(linears, xs, strict=True):
                m(x)

    with torch.no_grad():
        run()
        return min(timed(run) for _ in range(3))


def bench_size(layers: int, dim: int, heads: int, args) -> list[dict]:
    """Tokens/s of one model size at batch 1 and 8: lmlab eager and compiled, transformers, the GEMM floor."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "gpt2", n_layer=layers, d_model=dim, n_head=heads, vocab_size=args.vocab, max_seq_len=args.prompt + args.new
    )
    ours = build_model(cfg).eval()
    theirs = to_hf(ours).eval()
    theirs.generation_config.pad_token_id = 0  # silences the open-ended generation notice
    rows = []
    for batch in (1, 8):
        prompt = torch.randint(0, args.vocab, (batch, args.prompt))
        mask = torch.ones_like(prompt)

        def run_ours(p=prompt) -> torch.Tensor:
            return generate(ours, p, args.new, temperature=0)

        def run_compiled(p=prompt) -> torch.Tensor:
            return generate(ours, p, args.new, temperature=0, compile=True)

        def run_theirs(p=prompt, m=mask) -> torch.Tensor:
            return theirs.generate(
                p, attention_mask=m, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False
            )

        with torch.no_grad():
            assert torch.equal(run_ours(), run_theirs()), "greedy outputs differ"
            first = timed(run_compiled)  # compiles the decode step once for this batch size
            assert torch.equal(run_compiled(), run_ours()), "compiled greedy output differs"
            t_ours, t_comp, t_hf, t_floor = [], [], [], []
            for _ in range(args.rounds):  # the floor takes its turn too: a machine's speed drifts between rounds
                t_ours.append(timed(run_ours))
                t_comp.append(timed(run_compiled))
                t_hf.append(timed(run_theirs))
                t_floor.append(gemm_floor(ours, batch, args.new))
        n = batch * args.new
        result = {
            "arch": cfg.arch_name(),
            "params": ours.num_params(),
            "batch": batch,
            "eager": n / statistics.median(t_ours),
            "compiled": n / statistics.median(t_comp),
            "hf": n / statistics.median(t_hf),
            "floor": n / statistics.median(t_floor),
            "compile_s": first - statistics.median(t_comp),
        }
        rows.append(result)
        print(size_row(result), flush=True)
    return rows


def size_row(r: dict) -> str:
    """One row of the bench's table."""
    return (
        f"| {r['arch']} | {r['params'] / 1e6:.1f} M | {r['batch']} | {r['eager']:,.0f} | {r['compiled']:,.0f} "
        f"({r['compiled'] / r['floor']:.0%} of floor) | {r['hf']:,.0f} | **{r['eager'] / r['hf']:.2f}x** / "
        f"**{r['compiled'] / r['hf']:.2f}x** | {r['floor']:,.0f} | {r['compile_s']:.1f} s |"
    )


def trained(layers: int, dim: int, heads: int, ids: torch.Tensor, vocab: int, steps: int, args) -> torch.nn.Module:
    """A character model trained for `steps` AdamW steps (warmup, then cosine decay) on random windows of
    `ids` as long as its context, so every position it decodes at was trained; kept in `args.cache` and
    read back from there by later runs with the same settings and text."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "gpt2",
        n_layer=layers,
        d_model=dim,
        n_head=heads,
        vocab_size=vocab,
        max_seq_len=args.prompt + args.new,
        dropout=0.0,
    )
    model = build_model(cfg)
    key = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:12]
    path = (
        Path(args.cache).expanduser() / f"{cfg.arch_name()}-{steps}steps-{args.train_batch}x{args.lr}-{key}.safetensors"
    )
    if path.exists():
        load_weights(model, read_weights(path), path)
        print(f"read {cfg.arch_name()} ({steps} steps) from {path}", flush=True)
        return model.eval()
    opt = configure_optimizer(model, lr=args.lr, weight_decay=0.1)
    schedule = warmup_cosine_scheduler(opt, warmup=min(100, steps // 10), decay_steps=steps, min_ratio=0.1)
    gen = torch.Generator().manual_seed(0)
    width = cfg.max_seq_len + 1
    t0 = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - width, (args.train_batch,), generator=gen).tolist()
        chunk = torch.stack([ids[s : s + width] for s in starts])
        loss = model(chunk[:, :-1], chunk[:, 1:]).loss
        loss.backward()
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"  {cfg.arch_name()} step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    print(f"trained {cfg.arch_name()} for {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_weights(path, model.state_dict())
    return model.eval()


def bench_speculative(text: str, args) -> list[str]:
    """Plain (eager and compiled) vs speculative greedy decoding of a 6L/384D with a 2-layer draft, both trained
    on `text`: table rows, each against plain decoding in the same mode."""
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text[:400_000]])
    big = trained(6, 384, 6, ids, len(chars), args.train_steps, args)
    draft = trained(2, args.draft_dim, max(1, args.draft_dim // 64), ids, len(chars), args.draft_train_steps, args)
    prompt = ids[1000 : 1000 + args.prompt][None]
    runs = {
        "plain": lambda: generate(big, prompt, args.new, temperature=0),
        "plain --compile": lambda: generate(big, prompt, args.new, temperature=0, compile=True),
    }
    stats: dict[str, DraftStats] = {}
    for k in (int(v) for v in str(args.draft_tokens).split(",")):
        for mode, compile in (("", False), (" --compile", True)):
            name = f"speculative k={k}{mode}"
            stats[name] = DraftStats()
            runs[name] = partial(
                generate, big, prompt, args.new, temperature=0, draft=draft, draft_tokens=k, compile=compile
            )
    with torch.no_grad():
        reference = runs["plain"]()
        for name, run in runs.items():
            assert torch.equal(run(draft_stats=stats[name]) if name in stats else run(), reference), name
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(timed(run))
    text = "".join(chars[i] for i in reference[0, args.prompt :].tolist())
    print(f"greedy text: {text[:70]!r}", flush=True)
    rows = []
    for name, ts in times.items():
        plain = statistics.median(times["plain --compile" if "--compile" in name else "plain"])
        t = statistics.median(ts)
        rate = f"{stats[name].rate:.0%}" if name in stats else ""
        rows.append(f"| {name} | {args.new / t:,.0f} | **{plain / t:.2f}x** | {rate} |")
        print(rows[-1], flush=True)
    return rows


REMOTE_CODE = {
    "mla": {"attn": "mla", "pos": "rope", "norm": "rmsnorm", "ffn": "swiglu"},
    "alibi": {"attn": "sdpa", "pos": "alibi", "ffn": "swiglu", "n_kv_head": 2},
    "gpt2 + window 64": {"attn": "sliding_window", "window": 64},
}


def bench_remote_code(args) -> list[str]:
    """lmlab eager decode vs the remote-code export's `generate`, cached and uncached: table rows."""
    import transformers

    rows = []
    for name, overrides in REMOTE_CODE.items():
        torch.manual_seed(0)
        cfg = ModelConfig.from_preset(
            "gpt2", n_layer=4, d_model=256, n_head=4, vocab_size=args.vocab, max_seq_len=args.prompt + args.new
        )
        cfg = ModelConfig.model_validate(cfg.model_dump() | overrides)
        ours = build_model(cfg).eval()
        folder = tempfile.mkdtemp()
        _write_remote_code(ours, Path(folder))
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        prompt = torch.randint(0, args.vocab, (1, args.prompt))
        greedy = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
        runs = {
            "lmlab": partial(generate, ours, prompt, args.new, temperature=0),
            "export": partial(theirs.generate, prompt, **greedy),
            "export, no cache": partial(theirs.generate, prompt, **greedy, use_cache=False),
        }
        with torch.no_grad():
            reference = runs["lmlab"]()
            for run in runs.values():
                assert torch.equal(run(), reference), f"{name}: greedy outputs differ"
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.rounds):
                for k, run in runs.items():
                    times[k].append(timed(run))
        t = {k: statistics.median(v) / args.new * 1e3 for k, v in times.items()}
        rows.append(
            f"| {name} | {ours.num_params() / 1e6:.1f} M | {t['lmlab']:.2f} | {t['export']:.2f} "
            f"| **{t['export'] / t['lmlab']:.2f}x** | {t['export, no cache']:.2f} "
            f"| {t['export, no cache'] / t['lmlab']:.2f}x |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    """Time every size at batch 1 and 8 and print (and optionally write) a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4x128x4,6x384x6", help="comma-separated LAYERSxDIMxHEADS")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    ap.add_argument("--speculative", action="store_true", help="add the trained speculative-decoding rows")
    ap.add_argument("--text", default="../shared/data/tinyshakespeare.txt", help="training text for --speculative")
    ap.add_argument("--train-steps", type=int, default=2000, help="the 6L/384D model's training steps")
    ap.add_argument("--draft-train-steps", type=int, default=3000, help="the draft's training steps")
    ap.add_argument("--train-batch", type=int, default=8, help="windows per training step, each a full context")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--cache", default="~/.cache/lmlab/bench", help="where trained models are kept between runs")
    ap.add_argument("--draft-dim", type=int, default=128)
    ap.add_argument("--draft-tokens", default="3,4,6", help="comma-separated draft lengths k, a row pair each")
    ap.add_argument("--remote-code", action="store_true", help="add the remote-code export rows")
    args = ap.parse_args()
    header = [
        f"Greedy decoding, prompt {args.prompt} tokens, {args.new} new tokens, vocab {args.vocab}, median of "
        f"{args.rounds} alternating rounds; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}.",
        "",
        "| model | params | batch | lmlab tok/s | lmlab --compile tok/s | transformers tok/s "
        "| vs transformers (eager / compiled) | GEMM floor tok/s | compile time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    if args.sizes == "none":
        header = header[:1]
    print("\n".join(header), flush=True)
    rows = []
    for size in args.sizes.split(",") if args.sizes != "none" else []:
        layers, dim, heads = (int(v) for v in size.lower().split("x"))
        rows += [size_row(r) for r in bench_size(layers, dim, heads, args)]
    if args.speculative:
        spec = [
            "",
            f"Speculative greedy decoding of a trained 6L/384D character model, batch 1, {args.new} new tokens; "
            f"draft: 2 layers, {args.draft_dim} wide, k tokens per pass; trained on the same "
            f"text for {args.train_steps} and {args.draft_train_steps} steps of {args.train_batch} full contexts.",
            "",
            "| decoding | tok/s | vs plain (same mode) | draft acceptance |",
            "| --- | ---: | ---: | ---: |",
        ]
        print("\n".join(spec), flush=True)
        rows += spec + bench_speculative(Path(args.text).read_text(), args)
    if args.remote_code:
        remote = [
            "",
            f"Remote-code exports (`modeling_lmlab.py`), 4 layers x 256, batch 1, prompt {args.prompt}, {args.new} new "
            "tokens, greedy; milliseconds per token, lmlab eager decode against the export's `generate`.",
            "",
            "| model | params | lmlab ms/token | export ms/token | export / lmlab | export, no cache | no cache / lmlab |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        print("\n".join(remote), flush=True)
        rows += remote + bench_remote_code(args)
    if args.out:
        Path(args.out).write_text("\n".join(header + rows) + "\n")


if __name__ == "__main__":
    main()
