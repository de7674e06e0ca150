"""Train-step throughput of lmlab's gpt2 preset vs transformers' GPT2LMHeadModel, interleaved in one run.

Both models hold the same weights (lmlab's is converted from the HF one), take the same batches,
and use AdamW with the same settings. Rounds alternate between the two so that machine noise hits
both equally; the figure is the median over rounds. Also prints lmlab's MFU against this machine's
measured float32 matmul peak.

    python bench/train_speed_vs_hf.py [--rounds 7] [--steps 10] [--sizes baby,small]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmlab.export.hf import from_hf
from lmlab.utils.hardware import cpu_matmul_peak

SIZES = {
    # name: (n_layer, n_head, d_model, seq_len, batch, vocab)
    "baby": (4, 4, 128, 64, 12, 65),  # nanoGPT's CPU shakespeare_char recipe
    "small": (6, 6, 384, 256, 8, 65),  # nanoGPT's GPU shakespeare_char dims at batch 8
}


def make_models(n_layer: int, n_head: int, d_model: int, seq_len: int, vocab: int):
    """An HF GPT-2 with random weights and the lmlab gpt2-preset model holding the same weights."""
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=seq_len,
        n_embd=d_model,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg)
    hf.config._attn_implementation = "sdpa"
    return hf.train(), from_hf(hf).train()


def step_fns(hf, ours):
    """One optimizer step for each model, on the same batch."""
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)

    def step_hf(x, y):
        loss = hf(input_ids=x, labels=x).loss
        loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        return loss

    def step_ours(x, y):
        loss = ours(x, targets=y).loss
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss

    return step_hf, step_ours


def timed(fn, batches) -> float:
    """Seconds to run fn over the batches."""
    t0 = time.perf_counter()
    for x, y in batches:
        fn(x, y)
    return time.perf_counter() - t0


def bench(size: str, rounds: int, steps: int) -> dict:
    """Median tokens/s of both models over alternating rounds."""
    n_layer, n_head, d_model, seq_len, batch, vocab = SIZES[size]
    hf, ours = make_models(n_layer, n_head, d_model, seq_len, vocab)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (batch, seq_len + 1), generator=gen) for _ in range(steps)]
    batches = [(b[:, :-1], b[:, 1:]) for b in batches]
    with torch.no_grad():
        x = batches[0][0]
        assert torch.allclose(hf(x).logits, ours(x).logits, atol=1e-4), "models differ"
    step_hf, step_ours = step_fns(hf, ours)
    timed(step_hf, batches[:3])  # warm-up
    timed(step_ours, batches[:3])
    tps_hf, tps_ours = [], []
    tokens = steps * batch * seq_len
    for r in range(rounds):
        order = [(step_ours, tps_ours), (step_hf, tps_hf)]
        for fn, out in order if r % 2 == 0 else order[::-1]:
            out.append(tokens / timed(fn, batches))
    med_ours, med_hf = statistics.median(tps_ours), statistics.median(tps_hf)
    flops = ours.flops_per_token(seq_len, training=True)
    return {
        "size": size,
        "arch": ours.config.arch_name(),
        "params": ours.num_params(),
        "lmlab_tok_s": med_ours,
        "hf_tok_s": med_hf,
        "ratio": med_ours / med_hf,
        "lmlab_tflops": med_ours * flops / 1e12,
    }


def main() -> None:
    """Print one line per size and the machine's peak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sizes", default="baby,small")
    args = parser.parse_args()
    peak = cpu_matmul_peak()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(f"{'size':<6} {'arch':<34} {'params':>10} {'lmlab tok/s':>12} {'HF tok/s':>10} {'ratio':>6} {'MFU':>6}")
    for size in args.sizes.split(","):
        r = bench(size, args.rounds, args.steps)
        mfu = r["lmlab_tflops"] * 1e12 / peak
        print(
            f"{r['size']:<6} {r['arch']:<34} {r['params']:>10,} {r['lmlab_tok_s']:>12,.0f} {r['hf_tok_s']:>10,.0f} "
            f"{r['ratio']:>6.2f} {100 * mfu:>5.1f}%"
        )


if __name__ == "__main__":
    main()
