"""Weight-exact interop with transformers' GPT-2 and Llama (random weights, built locally)."""

import pytest
import torch

from lmlab.errors import ConfigError
from lmlab.export.hf import from_hf, to_hf
from lmlab.model.build import build_model
from tests.conftest import tiny_cfg

transformers = pytest.importorskip("transformers")


def _gpt2(**kw):
    cfg = transformers.GPT2Config(
        vocab_size=97, n_positions=40, n_embd=48, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, **kw
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(**kw):
    base = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=5000.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    base.update(kw)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base)).eval()
    with torch.no_grad():  # make norm gains non-trivial so a mis-mapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("act", ["gelu_new", "gelu", "relu"])
def test_gpt2_from_hf_logits_match(act):
    hf = _gpt2(activation_function=act)
    ours = from_hf(hf).eval()
    assert ours.config.pos == "learned" and ours.config.tie_weights
    x = torch.randint(0, 97, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kv", [4, 2, 1])
@pytest.mark.parametrize("tie", [False, True])
def test_llama_from_hf_logits_match(kv, tie):
    hf = _llama(num_key_value_heads=kv, tie_word_embeddings=tie)
    ours = from_hf(hf).eval()
    assert ours.config.n_kv_head == kv and ours.config.rope.theta == 5000.0
    x = torch.randint(0, 97, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_to_hf_round_trip(preset):
    torch.manual_seed(1)
    ours = build_model(tiny_cfg(preset, n_kv_head=2 if preset == "llama" else None)).eval()
    hf = to_hf(ours)
    x = torch.randint(0, 61, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x).logits, atol=1e-4, rtol=1e-4)
        back = from_hf(hf).eval()
        torch.testing.assert_close(back(x).logits, ours(x).logits, atol=1e-5, rtol=1e-5)
    # no special ids from the family's defaults (GPT-2's 50256 is past this 61-token vocabulary): a tokenizer's
    for config in (hf.config, hf.generation_config):
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (None, None, None)


def test_hf_greedy_generation_matches():
    hf = _llama()
    ours = from_hf(hf)
    prompt = torch.randint(0, 97, (1, 5))
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    mine = ours.generate(prompt, 12, temperature=0)
    assert torch.equal(theirs, mine)


def test_to_hf_refuses_configs_without_family():
    with pytest.raises(ConfigError, match="no transformers family"):
        to_hf(build_model(tiny_cfg("gpt2", pos="rope")))
