"""Every attention x position x FFN x norm x norm position: legal ones work, illegal ones say why."""

import itertools

import pytest
import torch
from safetensors.torch import load_model, save_model

from lmlab.errors import ConfigError
from lmlab.model.build import build_model
from lmlab.registry import ATTN, FFN, NORM, POS
from tests.conftest import tiny_cfg

AXES = list(itertools.product(ATTN.names(), POS.names(), FFN.names(), NORM.names(), ["pre", "post"]))
SMALL = dict(
    n_layer=1,
    n_head=2,
    n_kv_head=1,
    d_model=16,
    vocab_size=29,
    max_seq_len=24,
    window=5,
    nsa={"block_size": 4, "stride": 2, "select_block": 4, "n_select": 2, "window": 5},
    moe={"n_experts": 3, "top_k": 2, "n_shared": 1, "d_expert": 8},
    mla={"kv_lora_rank": 8, "qk_rope_head_dim": 4},
)


def _cfg(attn, pos, ffn, norm, norm_position):
    return tiny_cfg("llama", attn=attn, pos=pos, ffn=ffn, norm=norm, norm_position=norm_position, **SMALL)


@pytest.mark.parametrize(("attn", "pos", "ffn", "norm", "norm_position"), AXES, ids=lambda v: str(v))
def test_combination(attn, pos, ffn, norm, norm_position, tmp_path):
    try:
        cfg = _cfg(attn, pos, ffn, norm, norm_position)
    except ConfigError as exc:
        # Refused combinations name the field and the reason.
        assert "model." in str(exc) and "does not support" in str(exc)
        return
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 29, (2, 14))
    out = model(x, targets=x.roll(-1, 1))
    loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())

    model.eval()
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2, 24)
        steps = [model(x[:, :6], cache=cache).logits] + [
            model(x[:, t : t + 1], cache=cache).logits for t in range(6, 14)
        ]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
        y = x.clone()
        y[:, 9:] = (y[:, 9:] + 1) % 29
        torch.testing.assert_close(model(y).logits[:, :9], full[:, :9], atol=1e-6, rtol=1e-6)

    save_model(model, str(tmp_path / "m.safetensors"))
    again = build_model(cfg)
    load_model(again, str(tmp_path / "m.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x).logits, full)


def test_grid_has_legal_and_refused_combinations():
    legal = refused = 0
    for combo in AXES:
        try:
            _cfg(*combo)
            legal += 1
        except ConfigError:
            refused += 1
    assert legal >= 700 and refused > 0
