"""The CUDA paths, on a GPU: bf16 training of every preset, the flash and memory-efficient SDPA kernels
against the math kernel, compiled == eager, CUDA-graph decoding == eager greedy, collectives under NCCL
and the out-of-the-box GPU defaults."""

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
from tests.helpers import SMALL_SPARSE

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
