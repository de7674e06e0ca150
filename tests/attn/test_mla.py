"""MLA: absorbed == naive, full rank without rope == MHA, compressed cache size."""

import pytest
import torch

from lmlab.attn.mla import MLA, mla_dims
from lmlab.config import ModelConfig
from lmlab.errors import ConfigError
from lmlab.model.build import build_model
from lmlab.model.cost import kv_cache_bytes_per_token
from lmlab.pos.rope import RotaryPositions
from tests.conftest import tiny_cfg


@pytest.mark.parametrize("q_lora_rank", [None, 24])
def test_absorbed_equals_naive(q_lora_rank):
    torch.manual_seed(0)
    cfg = tiny_cfg("llama", attn="mla", mla={"kv_lora_rank": 16, "q_lora_rank": q_lora_rank, "qk_rope_head_dim": 4})
    mla, rope = MLA(cfg), RotaryPositions(cfg)
    x = torch.randn(2, 11, cfg.d_model)
    pos = rope.context(11, 0, x.device)
    q_nope, q_rope = mla._queries(x, pos)
    c_kv, k_rope = mla._latents(x, pos)
    mask = torch.zeros(11, 11).masked_fill(torch.ones(11, 11, dtype=torch.bool).triu(1), float("-inf"))
    naive = mla.attend_naive(q_nope, q_rope, c_kv, k_rope, mask, False)
    absorbed = mla.attend_absorbed(q_nope, q_rope, c_kv, k_rope, mask, False)
    torch.testing.assert_close(absorbed, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        mla.attend_absorbed(q_nope, q_rope, c_kv, k_rope, None, True), naive, atol=1e-5, rtol=1e-5
    )


def test_full_rank_without_rope_split_equals_mha_on_same_weights():
    torch.manual_seed(0)
    base = dict(n_layer=1, bias=False, pos="learned")
    mha_cfg = tiny_cfg("llama", attn="mha", **base)
    d, H, hs = mha_cfg.d_model, mha_cfg.n_head, mha_cfg.head_dim
    mla_cfg = mha_cfg.model_copy(
        update={
            "attn": "mla",
            "mla": mha_cfg.mla.model_copy(update={"kv_lora_rank": d, "qk_rope_head_dim": 0, "kv_norm": False}),
        }
    )
    mha, mla = build_model(mha_cfg), build_model(mla_cfg)
    sd = mha.state_dict()
    a = mha.blocks[0].attn
    w_q, w_k, w_v = a.qkv.weight.split(d)
    m = mla.blocks[0].attn
    new = {k: v for k, v in sd.items() if not k.startswith("blocks.0.attn.")}
    new["blocks.0.attn.wq.weight"] = w_q
    new["blocks.0.attn.wkv_a.weight"] = torch.eye(d)  # the "latent" is x itself
    # wkv_b rows per head: that head's key rows then its value rows.
    new["blocks.0.attn.wkv_b.weight"] = torch.cat([w_k.view(H, hs, d), w_v.view(H, hs, d)], 1).reshape(2 * d, d)
    new["blocks.0.attn.proj.weight"] = a.proj.weight
    mla.load_state_dict(new)
    assert m.rope == 0 and m.kv_rank == d
    x = torch.randint(0, mha_cfg.vocab_size, (2, 15))
    torch.testing.assert_close(mla(x).logits, mha(x).logits, atol=1e-5, rtol=1e-5)


def test_cache_stores_latent_and_shared_rope_key_only():
    cfg = tiny_cfg("llama", attn="mla", mla={"kv_lora_rank": 16, "qk_rope_head_dim": 4})
    model = build_model(cfg)
    cache = model.new_cache(1, 32)
    with torch.no_grad():
        model(torch.randint(0, 61, (1, 9)), cache=cache)
    layer = cache[0]
    assert layer.c_kv.shape == (1, 32, 16) and layer.k_rope.shape == (1, 32, 4) and layer.length == 9
    assert not hasattr(layer, "k")


def test_deepseek_kv_cache_is_under_a_quarter_of_mha():
    cfg = ModelConfig.from_preset("deepseek")
    mla_bytes = kv_cache_bytes_per_token(cfg)
    mha_bytes = kv_cache_bytes_per_token(cfg.model_copy(update={"attn": "sdpa"}))
    d = mla_dims(cfg)
    assert mla_bytes == cfg.n_layer * (d["kv_rank"] + d["rope"]) * 2
    assert mha_bytes == 2 * cfg.n_layer * cfg.n_head * cfg.head_dim * 2
    assert mla_bytes <= mha_bytes / 4


def test_rope_without_rotary_dims_is_refused():
    with pytest.raises(ConfigError, match="model.mla.qk_rope_head_dim"):
        tiny_cfg("llama", attn="mla", mla={"qk_rope_head_dim": 0})
