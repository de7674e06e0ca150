"""MiniTrainer's overhead over a bare hand-written training loop, with torch.compile off and on.

Both loops train the same model (the tiny preset: 4L-4H-128D RoPE/RMSNorm/SwiGLU, context 128,
batch 16) on the same random-window batches with AdamW, clipping and a warmup-cosine schedule.
Rounds alternate between the two; the figure is the median tokens/s over rounds. With compile on,
both loops run the same compiled module (compiled once, warmed up before timing).

    python bench/trainer_overhead.py [--rounds 5] [--steps 20] [--compile both|on|off]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lmlab.config import ModelConfig
from lmlab.data.datasets import RandomWindowLoader
from lmlab.model.build import build_model
from lmlab.trainer.mini_trainer import MiniTrainer
from lmlab.trainer.optim import configure_optimizer
from lmlab.trainer.schedules import warmup_cosine_scheduler

BATCH, SEQ = 16, 128


def bare_loop(model, loader, steps: int) -> float:
    """Seconds for `steps` plain optimizer steps."""
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    sched = warmup_cosine_scheduler(opt, warmup=10, decay_steps=1000, min_ratio=0.1)
    params = list(model.parameters())
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = loader.sample()
        loss = model(x, targets=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        float(loss.detach())  # the trainer reads the loss every step too
    return time.perf_counter() - t0


def trainer_loop(model, loader, steps: int) -> float:
    """Seconds for MiniTrainer to run `steps` steps (no eval, no checkpoints, no callbacks)."""
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    sched = warmup_cosine_scheduler(opt, warmup=10, decay_steps=1000, min_ratio=0.1)
    trainer = MiniTrainer(
        model,
        opt,
        train_loader=loader,
        max_steps=steps,
        device="cpu",
        precision="fp32",
        clip_grad=1.0,
        scheduler=sched,
        peak_flops_override=1e11,
    )
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def measure(compiled: bool, rounds: int, steps: int) -> tuple[float, float]:
    """Median tokens/s of (bare loop, MiniTrainer)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("tiny", vocab_size=96, max_seq_len=SEQ))
    runner = torch.compile(model) if compiled else model
    runner.flops_per_token = model.flops_per_token  # the trainer reads it for MFU
    runner.config = model.config
    tokens = np.random.default_rng(0).integers(0, 96, 2_000_000).astype(np.uint16)
    loader = RandomWindowLoader(tokens, BATCH, SEQ, seed=0)
    bare_loop(runner, loader, 3)  # warm-up (and compilation)
    trainer_loop(runner, loader, 3)
    bare, ours = [], []
    for r in range(rounds):
        order = [(bare_loop, bare), (trainer_loop, ours)]
        for fn, out in order if r % 2 == 0 else order[::-1]:
            out.append(steps * BATCH * SEQ / fn(runner, loader, steps))
    return statistics.median(bare), statistics.median(ours)


def main() -> None:
    """Print the tokens/s of both loops and the overhead, per compile setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both")
    args = parser.parse_args()
    settings = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} x {SEQ}")
    print(f"{'compile':<8}{'bare tok/s':>12}{'trainer tok/s':>15}{'overhead':>10}")
    for compiled in settings:
        bare, ours = measure(compiled, args.rounds, args.steps)
        print(f"{'on' if compiled else 'off':<8}{bare:>12,.0f}{ours:>15,.0f}{100 * (1 - ours / bare):>9.2f}%")


if __name__ == "__main__":
    main()
