"""Test helpers shared across modules (imported explicitly, not fixtures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch.utils import flop_counter

from lmlab.config import ModelConfig
from lmlab.model.build import build_model


def twin_models(cfg: ModelConfig, **changes):
    """Two models with identical weights whose configs differ by `changes` (e.g. attn)."""
    torch.manual_seed(0)
    a = build_model(cfg)
    b = build_model(cfg.model_copy(update=changes))
    b.load_state_dict(a.state_dict())
    return a, b


def counted_flops(fn) -> int:
    """FLOPs of fn() by torch's FlopCounterMode, with its own SDPA formulas also applied to the CPU kernel."""
    aten = torch.ops.aten

    def fwd(q, k, v, *args, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(q, k, v)

    def bwd(grad_out, q, k, v, *args, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)

    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd,
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


SMALL_SPARSE = {"nsa": {"block_size": 4, "stride": 2, "select_block": 4, "n_select": 2, "window": 6}}


def legal_grid(preset: str = "llama", **axes) -> list[tuple]:
    """Every combination of the given axes ({field: [values]}) that the config validator accepts."""
    import itertools

    from lmlab.errors import ConfigError
    from tests.conftest import tiny_cfg

    names = list(axes)
    out = []
    for values in itertools.product(*axes.values()):
        try:
            tiny_cfg(preset, **dict(zip(names, values, strict=True)), **SMALL_SPARSE, window=8)
        except ConfigError:
            continue
        out.append(values)
    return out


def small_train_args(
    corpus_file, *, layers: int = 2, dim: int = 32, heads: int = 2, seq_len: int = 32, **extra
) -> list:
    """`lmlab train` flags for a small, quiet run on a test corpus; shortcuts as `max_steps=5`, fields as `train__x=v`."""
    args = [
        "--data",
        f"file:{corpus_file}",
        "--layers",
        str(layers),
        "--dim",
        str(dim),
        "--heads",
        str(heads),
        "--context",
        str(seq_len),
        "--train.sample_tokens",
        "0",
        "--no-progress",
    ]
    for key, value in extra.items():
        flag = key.replace("__", ".") if "__" in key else key.replace("_", "-")  # train__eval_iters, max_steps
        args += [f"--{flag}", str(value)]
    return args


def decoder_presets() -> list[str]:
    """Presets of decoder-only language models (seq2seq presets have no causal-LM FLOPs contract)."""
    from lmlab.config import list_presets, load_preset

    return [p for p in list_presets() if load_preset(p).get("model", {}).get("arch", "decoder") == "decoder"]


BIN = Path(sys.executable).parent


def lmlab_train(args: list, *, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """`lmlab train args` in one process, or under torchrun with `nproc` processes on one node; `--standalone`
    takes a free port, so launches in parallel test workers never meet on torchrun's default one."""
    head = [str(BIN / "lmlab")]
    if nproc > 1:
        head = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "lmlab"]
    return subprocess.run([*head, "train", *args], capture_output=True, text=True, timeout=timeout)
