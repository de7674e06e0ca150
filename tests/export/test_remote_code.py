"""The self-contained `modeling_lmlab.py`: transformers loads lmlab compositions with no HF family, logits match,
and `generate` decodes them with a cache, left-padded batches and a sliding context, token for token as lmlab."""

import pytest
import torch

from lmlab.model.build import build_model
from lmlab.model.generate import left_pad
from lmlab.pipeline.export import _write_remote_code
from tests.conftest import tiny_cfg

transformers = pytest.importorskip("transformers")

COMPOSITIONS = [
    {"attn": "mla", "pos": "rope", "norm": "rmsnorm", "ffn": "swiglu", "mla": {"q_lora_rank": 16}},
    {"attn": "mla", "pos": "none", "mla": {"kv_norm": False}},
    {"attn": "sdpa", "pos": "alibi", "ffn": "swiglu", "n_kv_head": 2},
    {"attn": "sliding_window", "window": 5, "pos": "rope", "norm": "layernorm_nobias", "ffn": "geglu"},
    {"attn": "mha", "pos": "sinusoidal", "norm_position": "post", "activation": "relu", "tie_weights": False},
    {"attn": "mha", "pos": "rope", "rope": {"fraction": 0.5}, "ffn": "gated_mlp", "activation": "gelu_tanh"},
    {"attn": "sdpa", "pos": "rope", "head_dim": 12, "qkv_bias": True, "attn_proj_bias": False, "ffn_bias": False},
    # Llama's blocks, but muP's logit multiplier: no transformers family computes it (test_mup checks that)
    {"pos": "rope", "norm": "rmsnorm", "ffn": "swiglu", "bias": False, "mup_base_width": 16},
]


@pytest.mark.parametrize("overrides", COMPOSITIONS, ids=lambda o: "-".join(str(v) for v in o.values())[:40])
def test_remote_code_logits_and_cached_generation_match(tmp_path, overrides):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("gpt2", max_seq_len=32, **overrides)).eval()
    _write_remote_code(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    seen = []  # tokens per forward: after the prompt, one while the cache holds the context
    hf.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
        seen.clear()
        ours = model.generate(ids[:1, :5], 40, temperature=0)  # 45 tokens: the context slides past 32
        theirs = hf.generate(ids[:1, :5], max_new_tokens=40, min_new_tokens=40, do_sample=False)
        assert torch.equal(ours, theirs)
        assert seen[:28] == [5] + [1] * 27 and seen[28:] == [32] * 12  # cached to the context, then recomputed
        prompts = [ids[0, :3].tolist(), ids[1, :9].tolist()]
        batch, pad = left_pad(prompts)
        mask = (torch.arange(batch.shape[1])[None] >= pad[:, None]).long()
        padded = hf.generate(batch, attention_mask=mask, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    for row, prompt in zip(padded, prompts, strict=True):  # each row as it decodes alone
        alone = model.generate(torch.tensor([prompt]), 30, temperature=0)[0, len(prompt) :]
        assert torch.equal(row[batch.shape[1] :], alone)
