"""What a GPU user's first run depends on, checked where no GPU is: the fused AdamW switch, the
out-of-memory line (and the checkpoint it leaves intact), a bf16-autocast training step, compiled ==
eager forward and backward for every attention family, and an install that keeps the user's torch."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.config import TrainConfig
from lmlab.data.datasets import RandomWindowLoader
from lmlab.errors import MemoryBudgetError
from lmlab.model.build import build_model
from lmlab.registry import ATTN
from lmlab.runs import checkpoint as ckpt
from lmlab.trainer.mini_trainer import OUT_OF_MEMORY, MiniTrainer
from lmlab.trainer.optim import configure_optimizer, fused_applies, use_fused
from tests.conftest import tiny_cfg
from tests.helpers import SMALL_SPARSE

REPO = Path(__file__).resolve().parents[2]


def _tokens(n=2000, vocab=61, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def _trainer(tmp_path, model, **kw):
    opt = configure_optimizer(model, lr=3e-3, weight_decay=0.1)
    loader = RandomWindowLoader(_tokens(), 4, 16, seed=1)
    settings = dict(max_steps=4, device="cpu", precision="fp32", ckpt_dir=tmp_path, eval_interval=2, eval_iters=1)
    return MiniTrainer(
        model, opt, train_loader=loader, val_loader=RandomWindowLoader(_tokens(seed=1), 4, 16), **{**settings, **kw}
    )


def test_fused_adamw_is_auto_on_cuda_only_and_switchable():
    model = build_model(tiny_cfg("llama"))
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert not fused_applies(opt, "auto")  # CPU parameters: the foreach kernel stays
    assert not fused_applies(opt, "off") and fused_applies(opt, "on")
    assert not fused_applies(torch.optim.SGD(model.parameters(), lr=0.1), "on")
    assert TrainConfig().fused_adamw == "auto" and TrainConfig().tf32 and TrainConfig().pin_memory


def test_a_fused_adamw_step_equals_the_foreach_step():
    """`use_fused` on a built optimizer runs torch's fused kernel (CPU has one too): the same update."""
    torch.manual_seed(0)
    a, b = build_model(tiny_cfg("llama")), build_model(tiny_cfg("llama"))
    b.load_state_dict(a.state_dict())
    opts = [configure_optimizer(m, lr=1e-2, weight_decay=0.1) for m in (a, b)]
    assert use_fused(opts[1], "on") and opts[1].param_groups[0]["fused"]
    x = torch.randint(0, 61, (2, 16))
    for _ in range(3):
        for m, opt in zip((a, b), opts, strict=True):
            m(x, x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_the_trainer_records_which_gpu_defaults_took_effect(tmp_path):
    trainer = _trainer(tmp_path, build_model(tiny_cfg("llama")), fused_adamw="auto")
    assert trainer.kernels == {"fused_adamw": False, "tf32": False, "pin_memory": False, "deterministic": False}
    assert _trainer(tmp_path / "on", build_model(tiny_cfg("llama")), fused_adamw="on").kernels["fused_adamw"]


def test_out_of_memory_is_one_line_with_the_remedies_and_the_checkpoint_survives(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama"))
    trainer = _trainer(tmp_path, model)
    forward, calls = model.forward, []

    def failing(*args, **kwargs):
        calls.append(model.training)
        if sum(calls) == 3:  # the third training step, after the checkpoint of step 2
            raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", failing)
    with pytest.raises(MemoryBudgetError) as err:
        trainer.train()
    line = str(err.value)
    assert "\n" not in line and "step 3" in line and "batch 4 x 16 tokens" in line
    assert re.search(r"activations about [\d.]+ GiB \(cost card\)", line)
    assert "--train.grad_accum" in line and "activation_checkpointing" in line and "bf16" in line
    latest = ckpt.latest_valid(tmp_path)
    assert latest is not None and latest.name.endswith("2")


def test_a_bf16_autocast_training_step_is_finite_and_near_fp32(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(tiny_cfg("llama", dropout=0.0))
        trainer = _trainer(tmp_path / precision, model, precision=precision, max_steps=2)
        losses[precision] = trainer.train()["loss"]
    assert np.isfinite(losses["bf16"])
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"]  # bf16 keeps 8 bits of mantissa


FAMILIES = ATTN.names()


@pytest.mark.parametrize("attn", FAMILIES)
def test_compiled_forward_and_backward_equal_eager(attn):
    """Dynamo and AOTAutograd over each attention family (no code generation; inductor runs in the
    decode tests): the same loss and the same gradients as eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = tiny_cfg("llama", attn=attn, n_layer=1, n_kv_head=2, window=8, dropout=0.0, **SMALL_SPARSE)
    model = build_model(cfg)
    x = torch.randint(0, 61, (2, 24))
    eager_loss = model(x, x).loss
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    loss = compiled(x, x).loss
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for g, e in zip((p.grad for p in model.parameters()), eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_the_package_asks_for_a_torch_lower_bound_and_the_makefile_pins_this_machine():
    meta = (REPO / "pyproject.toml").read_text()
    (torch_req,) = re.findall(r'"torch([^"]*)"', meta)
    assert torch_req.startswith(">=") and "==" not in torch_req and "<" not in torch_req
    assert re.search(r"pip install -q torch==\d", (REPO / "Makefile").read_text())


def test_installing_lmlab_keeps_the_torch_already_there(tmp_path):
    """pip's own plan for `pip install -e .` into this environment (which already holds a torch): torch stays."""
    report = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--no-index", "--no-deps"]
    proc = subprocess.run([*cmd, "--report", str(report), "-e", str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    planned = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert planned == {"lmlab"}
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert "torch" not in check.stdout, check.stdout


def test_the_device_report_runs_at_toy_size_on_cpu(tmp_path):
    """bench/gpu_report.py's every section, tiny and on CPU: a first GPU run cannot fail on a typo."""
    cmd = [sys.executable, str(REPO / "bench/gpu_report.py"), "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    proc = subprocess.run([*cmd, "--compile-backend", "aot_eager"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert {r["mode"] for r in report["training"]} == {"eager", "compiled"} and len(report["training"]) == 5
    assert [r["T"] for r in report["attention"]] == [128, 256] and len(report["decode"]) == 2
    assert "| lmlab gpt2 | compiled |" in (tmp_path / "gpu_report.md").read_text()


def test_deterministic_turns_on_torch_deterministic_algorithms_for_the_process(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        trainer = _trainer(tmp_path, build_model(tiny_cfg("llama")), deterministic=True)
        assert trainer.kernels["deterministic"] and torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # what cuBLAS needs to repeat itself
        assert TrainConfig(deterministic=True).deterministic and not TrainConfig().deterministic
    finally:
        torch.use_deterministic_algorithms(False)
