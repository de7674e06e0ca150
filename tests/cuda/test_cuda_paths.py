"""The CUDA paths, on a GPU: bf16 training of every preset, the flash and memory-efficient SDPA kernels
against the math kernel, compiled == eager, CUDA-graph decoding == eager greedy, collectives under NCCL
the out-of-the-box GPU defaults, a step between logs without a host sync, a bitwise resume under
deterministic algorithms, and DDP / FSDP2 under NCCL."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmlab.data.datasets import RandomWindowLoader
from lmlab.model.build import build_model
from lmlab.model.generate import generate
from lmlab.registry import ATTN
from lmlab.trainer.mini_trainer import MiniTrainer
from lmlab.trainer.optim import configure_optimizer
from tests.conftest import tiny_cfg
from tests.helpers import SMALL_SPARSE, small_train_args

PRESETS = ["gpt2", "llama", "mistral", "deepseek", "hybrid", "mpt", "team", "tiny"]
CUDA = torch.device("cuda")


def _train(preset: str, precision: str, steps: int = 4) -> float:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(preset, dropout=0.0))
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    tokens = np.random.default_rng(0).integers(0, 61, 4000).astype(np.uint16)
    trainer = MiniTrainer(
        model,
        opt,
        train_loader=RandomWindowLoader(tokens, 4, 16, seed=1),
        max_steps=steps,
        device="cuda",
        precision=precision,
    )
    assert trainer.kernels["fused_adamw"] and trainer.kernels["pin_memory"]
    return trainer.train()["loss"]


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_training_is_finite_and_near_fp32(preset):
    bf16, fp32 = _train(preset, "bf16"), _train(preset, "fp32")
    assert np.isfinite(bf16) and abs(bf16 - fp32) < 0.05 * fp32


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
def test_fused_sdpa_kernels_equal_the_math_kernel(backend):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, device=CUDA, dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with sdpa_kernel(backend):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("attn", ATTN.names())
def test_compiled_equals_eager_forward_and_backward(attn):
    torch.manual_seed(0)
    cfg = tiny_cfg("llama", attn=attn, n_layer=1, n_kv_head=2, window=8, dropout=0.0, **SMALL_SPARSE)
    model = build_model(cfg).to(CUDA)
    x = torch.randint(0, 61, (2, 24), device=CUDA)
    eager = model(x, x).loss
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss = torch.compile(model)(x, x).loss
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 4])
def test_cuda_graph_decoding_equals_eager_greedy(batch):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", max_seq_len=48)).to(CUDA).eval()
    prompt = torch.randint(0, 61, (batch, 7), device=CUDA)
    plain = generate(model, prompt, 30, temperature=0)
    assert torch.equal(generate(model, prompt, 30, temperature=0, compile=True), plain)
    assert torch.equal(generate(model, prompt, 30, temperature=0, compile=True), plain)


def test_collectives_run_on_the_gpu_under_nccl(monkeypatch):
    import torch.distributed as dist

    from lmlab.utils import dist as lmdist

    for key, value in dict(
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    ).items():
        monkeypatch.setenv(key, value)
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
    try:
        assert lmdist.process_device() == torch.device("cuda", 0)
        assert lmdist.all_reduce_mean(torch.tensor(2.5)) == 2.5
        lmdist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_step_between_logs_never_waits_for_the_gpu():
    """bf16 with fused AdamW (the defaults): any host sync in a non-logging step raises under the debug mode."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", dropout=0.0))
    tokens = np.random.default_rng(0).integers(0, 61, 4000).astype(np.uint16)
    trainer = MiniTrainer(
        model,
        configure_optimizer(model, lr=1e-3, weight_decay=0.1),
        train_loader=RandomWindowLoader(tokens, 4, 16, seed=1),
        max_steps=8,
        log_interval=4,
        device="cuda",
        precision="bf16",
    )
    assert trainer.device_skip
    batches, trainer._t_start = trainer._batches(), 0.0
    draws = [next(batches) for _ in range(8)]  # the loader's host work is not the step's
    for step, batch in enumerate(draws, start=1):
        if step % 4:
            torch.cuda.set_sync_debug_mode("error")
        try:
            metrics = trainer.after_step(trainer.train_step(iter([batch])), 0.1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(metrics["loss"])


def _lmlab(args: list, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-m", "lmlab", *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _final_weights(root: Path) -> dict:
    from safetensors.torch import load_file

    (weights,) = root.glob("*/artifacts/checkpoints/step_00000006/model.safetensors")
    return load_file(weights)


def test_a_resume_on_cuda_is_bitwise_exact_under_deterministic_algorithms(tmp_path, corpus_file):
    common = [*small_train_args(corpus_file, dropout=0, batch=4, train__decay_steps=6), "--device", "cuda"]
    common += ["--train.deterministic", "true", "--train.ckpt_interval", "3"]
    _lmlab(["train", *common, "--max-steps", "6", "--save-dir", str(tmp_path / "whole")])
    _lmlab(["train", *common, "--max-steps", "3", "--save-dir", str(tmp_path / "split")])
    (run,) = (tmp_path / "split").glob("2*")
    _lmlab(["train", *common, "--max-steps", "6", "--train.resume", str(run), "--save-dir", str(tmp_path / "split")])
    whole, split = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ddp_and_fsdp2_under_nccl_equal_one_process(strategy, tmp_path, corpus_file):
    """torchrun over every GPU (at most 2) with the batch split between them: the losses of one process."""
    procs = min(2, torch.cuda.device_count())
    common = [*small_train_args(corpus_file, max_steps=6, dropout=0, train__log_interval=1), "--device", "auto"]
    common += ["--precision", "fp32", "--train.tf32", "false"]
    _lmlab(["train", *common, "--batch", "4", "--save-dir", str(tmp_path / "one")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "-m", "lmlab"]
    split = ["--batch", str(4 // procs), "--train.distributed", strategy, "--save-dir", str(tmp_path / "many")]
    multi = subprocess.run(
        [*torchrun, "train", *common, *split],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]

    def losses(root: Path) -> list[float]:
        (metrics,) = root.glob("*/logs/metrics.jsonl")
        return [r["loss"] for r in map(json.loads, metrics.open()) if r.get("split") == "train"]

    one, many = losses(tmp_path / "one"), losses(tmp_path / "many")
    assert len(one) == len(many) == 6
    np.testing.assert_allclose(many, one, rtol=1e-4)
