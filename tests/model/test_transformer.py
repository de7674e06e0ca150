"""Model-level properties: causality, KV cache, init, tying, post-norm, parameter and FLOP counts."""

import math
from typing import ClassVar

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.model.build import build_model, build_transformer
from lmlab.registry import ATTN, NORM, POS
from tests.conftest import tiny_cfg
from tests.helpers import SMALL_SPARSE, counted_flops, decoder_presets, legal_grid

GRID = legal_grid(attn=ATTN.names(), pos=POS.names(), norm_position=["pre", "post"])


@pytest.mark.parametrize(("attn", "pos", "norm_position"), GRID)
def test_future_tokens_do_not_change_past_logits(attn, pos, norm_position):
    cfg = tiny_cfg("llama", attn=attn, pos=pos, norm_position=norm_position, n_kv_head=2, window=8, **SMALL_SPARSE)
    model = build_model(cfg).eval()
    x = torch.randint(0, 61, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 61, (2, 7))
    torch.testing.assert_close(model(x).logits[:, :9], model(y).logits[:, :9], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(x).logits[:, 9:], model(y).logits[:, 9:])


@pytest.mark.parametrize(("attn", "pos", "norm_position"), GRID)
def test_incremental_decoding_equals_full_forward(attn, pos, norm_position):
    cfg = tiny_cfg("gpt2", attn=attn, pos=pos, norm_position=norm_position, n_kv_head=2, window=8, **SMALL_SPARSE)
    model = build_model(cfg).eval()
    x = torch.randint(0, 61, (2, 14))
    full = model(x).logits
    cache = model.new_cache(2, 32)
    with torch.no_grad():  # MLA decodes in its absorbed form here
        parts = [model(x[:, :5], cache=cache).logits]  # prefill 5, then chunks of 1 and 3
        parts.append(model(x[:, 5:6], cache=cache).logits)
        parts.append(model(x[:, 6:9], cache=cache).logits)
        for t in range(9, 14):
            parts.append(model(x[:, t : t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache[0].length == 14


def test_gpt2_124m_parameter_count():
    with torch.device("meta"):
        model = build_model(ModelConfig.from_preset("gpt2"))
    assert model.num_params() == 124_439_808  # the published GPT-2 small count (tied head)
    assert model.num_params(non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768


def test_weight_tying_shares_storage():
    tied = build_model(tiny_cfg("gpt2"))
    assert tied.lm_head.weight is tied.tok_emb.weight
    untied = build_model(tiny_cfg("llama"))
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() - tied.num_params() != 0


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = tiny_cfg("gpt2", n_layer=8, d_model=256, n_head=4)
    model = build_model(cfg)
    std_proj = model.blocks[0].attn.proj.weight.std().item()
    std_fc = model.blocks[0].ffn.fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / math.sqrt(2 * 8)) < 0.0008
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0


def test_post_norm_has_no_final_norm_and_normalises_each_block():
    model = build_model(tiny_cfg("gpt2", norm_position="post")).eval()
    assert isinstance(model.norm_f, torch.nn.Identity)
    captured = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    model(torch.randint(0, 61, (1, 6)))
    out = captured["out"]
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 6), atol=1e-5, rtol=0)
    pre = build_model(tiny_cfg("gpt2", norm_position="pre"))
    assert isinstance(pre.norm_f, NORM.get("layernorm"))


def test_build_transformer_accepts_custom_classes():
    class ScaledNorm(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.g = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6) * math.sqrt(x.shape[-1])

    model = build_transformer(tiny_cfg("llama"), norm_cls=ScaledNorm)
    assert isinstance(model.blocks[0].norm1, ScaledNorm)
    assert model(torch.randint(0, 61, (1, 4))).logits.shape == (1, 4, 61)


def test_loss_is_cross_entropy_and_near_log_vocab_at_init():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("llama", vocab_size=200))
    x, y = torch.randint(0, 200, (4, 16)), torch.randint(0, 200, (4, 16))
    out = model(x, targets=y)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 200), y.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert abs(out.loss.item() - math.log(200)) < 0.3
    y[:, :8] = -100
    masked = model(x, targets=y).loss
    torch.testing.assert_close(
        masked, torch.nn.functional.cross_entropy(out.logits[:, 8:].reshape(-1, 200), y[:, 8:].reshape(-1))
    )


@pytest.mark.parametrize("preset", decoder_presets())
def test_flops_per_token_match_flop_counter(preset):
    cfg = ModelConfig.from_preset(preset, n_layer=2, d_model=64, n_head=4, vocab_size=100, max_seq_len=128)
    model = build_model(cfg)
    x = torch.randint(0, 100, (2, 128))
    fwd = counted_flops(lambda: model(x)) / x.numel()
    assert abs(model.flops_per_token(128) / fwd - 1) < 0.05
    train = counted_flops(lambda: model(x, targets=x).loss.backward()) / x.numel()
    assert abs(model.flops_per_token(128, training=True) / train - 1) < 0.05


class _ElementwiseFlops(torch.utils._python_dispatch.TorchDispatchMode):
    """Arithmetic elements the ops compute: what a norm or a rotation costs (sign flips and copies are free)."""

    aten = torch.ops.aten
    POINTWISE: ClassVar = {
        aten.mul.Tensor,
        aten.add.Tensor,
        aten.sub.Tensor,
        aten.pow.Tensor_Scalar,
        aten.rsqrt.default,
    }
    REDUCTIONS: ClassVar = {aten.mean.dim, aten.sum.dim_IntList}

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.POINTWISE:
            self.flops += out.numel()
        elif func in self.REDUCTIONS:
            self.flops += args[0].numel()
        return out


def test_norm_and_rope_flops_are_what_the_blocks_compute():
    """The elementwise counts the cost card and the run log add: RMSNorm and RoPE checked op by op
    (FlopCounterMode sees matmuls only)."""
    from lmlab.model.flops import flops_breakdown, grouped_breakdown

    cfg = tiny_cfg("llama", d_model=32, n_head=4, n_kv_head=2, n_layer=3)
    rows, x = 10, torch.randn(2, 5, 32)
    with _ElementwiseFlops() as mode:
        NORM.get("rmsnorm")(cfg)(x)
    assert mode.flops == rows * (NORM.get("rmsnorm").flops_per_token(32) + 2)  # + eps and rsqrt, once a row
    pos = POS.get("rope")(cfg)
    ctx = pos.context(5, 0, torch.device("cpu"))
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    with _ElementwiseFlops() as mode:
        ctx.rotate(q, k)
    assert mode.flops * cfg.n_layer == 5 * POS.get("rope").flops_per_token(cfg, 5)
    parts = flops_breakdown(cfg, 16)
    assert parts["norm"] == (2 * 3 + 1) * 4 * 32 and parts["position"] == 3 * 3 * (4 + 2) * 8
    assert sum(grouped_breakdown(cfg, 16).values()) == sum(parts.values())
    gpt2 = tiny_cfg("gpt2", d_model=32, n_layer=3)
    assert flops_breakdown(gpt2, 16)["norm"] == 7 * 7 * 32 and flops_breakdown(gpt2, 16)["position"] == 32
    alibi = flops_breakdown(tiny_cfg("llama", pos="alibi", n_layer=3, n_head=4), 16)["position"]
    assert alibi == 2 * 3 * 4 * 16


def test_dropout_is_active_in_training_only():
    model = build_model(tiny_cfg("gpt2", dropout=0.5))
    x = torch.randint(0, 61, (2, 8))
    model.train()
    assert not torch.allclose(model(x).logits, model(x).logits)
    model.eval()
    torch.testing.assert_close(model(x).logits, model(x).logits)
    assert model.blocks[0].attn.dropout == 0.5 and model.drop.p == 0.5
