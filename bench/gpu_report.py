"""The device report: what lmlab does on one GPU, next to `transformers` measured in the same run.

One command, under five minutes on an H100/H200-class GPU; it writes `gpu_report.md` and
`gpu_report.json` to `--out`:

- training tokens/s and MFU of GPT-2 124M (12L/768D, context 1024, bf16), lmlab eager and compiled,
  against transformers' `GPT2LMHeadModel` (sdpa, bf16, compiled), and the llama preset at ~125M;
- peak memory of the lmlab GPT-2 step against the cost card's estimate (weights, gradients, AdamW
  state and activations);
- attention forward + backward at T = 4k..32k for sdpa, sliding window (w=1024) and native sparse;
- greedy decode tokens/s at batch 1 and 8: eager, compiled (CUDA graphs), transformers `generate`
  with its static cache;
- the device, driver, torch and CUDA versions.

`--device cpu --tiny` runs the same code at toy sizes (the suite runs it, so a first GPU run cannot
fail on a typo); `--compile-backend aot_eager` skips code generation there.

    python bench/gpu_report.py [--out reports/] [--device cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from lmlab.config import ModelConfig
from lmlab.model.build import build_model
from lmlab.model.cost import activation_bytes
from lmlab.model.generate import generate
from lmlab.utils.hardware import peak_flops

FULL = dict(layers=12, dim=768, heads=12, context=1024, batch=8, vocab=50304, steps=10, warmup=3)
TINY = dict(layers=2, dim=64, heads=2, context=64, batch=2, vocab=128, steps=2, warmup=1)
ATTN_T = {"full": [4096, 8192, 16384, 32768], "tiny": [128, 256]}


def sync(device: torch.device) -> None:
    """Wait for the device, so a wall-clock interval covers the work it timed."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def environment(device: torch.device) -> dict:
    """Device, driver, torch and CUDA versions."""
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown"
    else:
        env["device"] = platform.processor() or platform.machine()
    return env


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on GPUs; fp32 on CPU, where bf16 matmuls are emulated."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_rate(model, step_model, flops_per_token: float, size: dict, device, dtype) -> dict:
    """Tokens/s, MFU and peak memory of AdamW training steps of `step_model` (a compiled or eager `model`);
    `flops_per_token` is lmlab's count for the architecture (the same for a twin in another library)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, size["vocab"], (size["batch"], size["context"]), device=device)

    def step() -> None:
        for _ in range(size["steps"]):
            with autocast(device, dtype):
                out = step_model(x, x)
            loss = out.loss if hasattr(out, "loss") else out[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(size["warmup"]):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, 1) / size["steps"]
    tokens = size["batch"] * size["context"]
    flops = flops_per_token * tokens
    peak = peak_flops(device, "bf16" if dtype is not None else "fp32")
    row = {"tokens_per_s": tokens / seconds, "mfu": flops / seconds / peak if peak else None}
    if device.type == "cuda":
        row["peak_memory"] = torch.cuda.max_memory_allocated(device)
    return row


def lmlab_model(preset: str, size: dict, device) -> torch.nn.Module:
    """An lmlab preset at the report's size, on `device`."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        preset,
        n_layer=size["layers"],
        d_model=size["dim"],
        n_head=size["heads"],
        vocab_size=size["vocab"],
        max_seq_len=size["context"],
        dropout=0.0,
    )
    if preset == "llama":
        cfg = cfg.model_copy(update={"n_kv_head": size["heads"]})
    return build_model(cfg).to(device)


def hf_gpt2(size: dict, device) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel at the same size, sdpa attention."""
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=size["vocab"],
        n_positions=size["context"],
        n_embd=size["dim"],
        n_layer=size["layers"],
        n_head=size["heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
    )
    return transformers.GPT2LMHeadModel(cfg).to(device)


def training_rows(size: dict, device, dtype, args) -> list[dict]:
    """GPT-2 (lmlab eager, lmlab compiled, transformers compiled) and llama (eager, compiled) training."""
    compile_ = lambda m: torch.compile(m, backend=args.compile_backend)  # noqa: E731
    gpt2, llama, hf = lmlab_model("gpt2", size, device), lmlab_model("llama", size, device), hf_gpt2(size, device)
    runs = [  # (model, mode, parameters, step, the lmlab model whose FLOP count applies)
        ("lmlab gpt2", "eager", gpt2, gpt2, gpt2),
        ("lmlab gpt2", "compiled", gpt2, compile_(gpt2), gpt2),
        ("transformers GPT2LMHeadModel", "compiled", hf, compile_(lambda x, y: hf(input_ids=x, labels=y)), gpt2),
        ("lmlab llama", "eager", llama, llama, llama),
        ("lmlab llama", "compiled", llama, compile_(llama), llama),
    ]
    rows = []
    for name, mode, model, step, twin in runs:
        flops = twin.flops_per_token(size["context"], training=True)
        rows.append({"model": name, "mode": mode, **train_rate(model, step, flops, size, device, dtype)})
    n_params = sum(p.numel() for p in gpt2.parameters())
    width = 2 if dtype is not None else 4
    state = n_params * (4 + 4 + 8)  # fp32 weights, gradients, AdamW's two moments
    rows[1]["estimate"] = state + activation_bytes(gpt2.config, size["context"], size["batch"], width)
    return rows


def attention_rows(size: dict, device, dtype, args) -> list[dict]:
    """Forward + backward milliseconds of one attention layer at each T: sdpa, sliding window, native sparse."""
    window = 1024 if not args.tiny else 32
    kinds = {"sdpa": {}, "sliding_window": {"window": window}, "native_sparse": {}}
    rows = []
    for T in ATTN_T["tiny" if args.tiny else "full"]:
        row = {"T": T}
        for name, extra in kinds.items():
            cfg = ModelConfig.from_preset(
                "llama",
                n_layer=1,
                d_model=size["dim"],
                n_head=size["heads"],
                n_kv_head=size["heads"],
                max_seq_len=T,
                vocab_size=size["vocab"],
                attn=name,
                **extra,
            )
            model = build_model(cfg).to(device)
            x = torch.randn(1, T, size["dim"], device=device, requires_grad=True)

            def run(model=model, x=x) -> None:
                with autocast(device, dtype):
                    pos = model.pos.context(x.shape[1], 0, x.device)
                    model.blocks[0].attn(x, pos=pos).float().sum().backward()

            row[name] = timed(run, device, 3) * 1e3
        rows.append(row)
    return rows


def decode_rows(size: dict, device, args) -> list[dict]:
    """Greedy decode tokens/s at batch 1 and 8: lmlab eager and compiled, transformers with a static cache."""
    new = 128 if not args.tiny else 8
    gpt2 = lmlab_model("gpt2", {**size, "context": 256 if not args.tiny else 32}, device).eval()
    hf = hf_gpt2({**size, "context": 256 if not args.tiny else 32}, device).eval()
    hf.generation_config.pad_token_id = 0
    rows = []
    for batch in (1, 8):
        prompt = torch.randint(0, size["vocab"], (batch, 16), device=device)
        with torch.no_grad():
            runs = {
                "eager": lambda p=prompt: generate(gpt2, p, new, temperature=0),
                "compiled": lambda p=prompt: generate(gpt2, p, new, temperature=0, compile=True),
                "transformers static cache": lambda p=prompt: hf.generate(
                    p, max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static"
                ),
            }
            rows.append({"batch": batch, **{k: batch * new / timed(fn, device, 3) for k, fn in runs.items()}})
    return rows


def markdown(report: dict) -> str:
    """The report as one markdown page."""
    env = report["environment"]
    lines = [
        f"# Device report: {env['device']}",
        "",
        f"torch {env['torch']}, CUDA {env['cuda']}, driver "
        f"{env.get('driver', '-')}, Python {env['python']}; size {report['size']}.",
        "",
        "| model | mode | tokens/s | MFU | peak memory | estimate |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["training"]:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        mem = f"{r['peak_memory'] / 2**30:.2f} GiB" if r.get("peak_memory") else "-"
        est = f"{r['estimate'] / 2**30:.2f} GiB" if r.get("estimate") else "-"
        lines.append(f"| {r['model']} | {r['mode']} | {r['tokens_per_s']:,.0f} | {mfu} | {mem} | {est} |")
    lines += [
        "",
        "| T | sdpa ms | sliding window ms | native sparse ms | window speed-up |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["attention"]:
        lines.append(
            f"| {r['T']:,} | {r['sdpa']:.2f} | {r['sliding_window']:.2f} | {r['native_sparse']:.2f} "
            f"| {r['sdpa'] / r['sliding_window']:.2f}x |"
        )
    lines += [
        "",
        "| batch | eager tok/s | compiled tok/s | transformers tok/s | compiled / transformers |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["decode"]:
        hf = r["transformers static cache"]
        lines.append(
            f"| {r['batch']} | {r['eager']:,.0f} | {r['compiled']:,.0f} | {hf:,.0f} | {r['compiled'] / hf:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure every section and write the markdown and JSON reports."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: the same code paths in seconds")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--compile-backend", default="inductor")
    args = ap.parse_args()
    device = torch.device(args.device)
    import lmlab.model.static_decode as static_decode

    static_decode.BACKEND = args.compile_backend  # the compiled decode step too
    size = TINY if args.tiny else FULL
    dtype = torch.bfloat16 if device.type == "cuda" else None
    report = {"environment": environment(device), "size": "tiny" if args.tiny else "GPT-2 124M"}
    report["training"] = training_rows(size, device, dtype, args)
    report["attention"] = attention_rows(size, device, dtype, args)
    report["decode"] = decode_rows(size, device, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_report.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
