"""Every transformers config field is mapped exactly, known inert, or refused; checked against transformers itself."""

import pytest
import torch

from lmlab.errors import ConfigError
from lmlab.export.hf import from_hf, to_hf
from lmlab.export.hf_fields import FAMILIES, field_table
from lmlab.model.build import build_model
from tests.conftest import tiny_cfg

transformers = pytest.importorskip("transformers")
CONTEXT = 40

SMALL = {
    "gpt2": dict(vocab_size=61, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4),
    "llama": dict(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
    ),
}
SMALL["mistral"] = SMALL["qwen2"] = SMALL["llama"]
CLASSES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


def _hf(family: str, **fields):
    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[family])
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**SMALL[family], **fields})).eval()
    with torch.no_grad():  # non-trivial norm gains and biases, so a mis-mapped one would show
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _assert_same_logits(hf_model, ours) -> None:
    x = torch.randint(0, 61, (3, CONTEXT), generator=torch.Generator().manual_seed(1))  # the full context
    with torch.no_grad():
        # 5e-5: windowed families sum in another order (blocks here, one masked call there), and the fp32
        # kernels' rounding differs between CPUs.
        torch.testing.assert_close(ours.eval()(x).logits, hf_model(x).logits, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_field_of_the_family_is_classified(family):
    table = field_table()[family]
    assert [name for name, rule in table.items() if rule == "unknown"] == []
    assert {"mapped", "inert", "allowed"} >= {rule.split(":")[0] for rule in table.values()}


SUPPORTED = [
    ("gpt2", {"activation_function": "gelu_new"}),
    ("gpt2", {"activation_function": "gelu"}),
    ("gpt2", {"activation_function": "silu", "n_inner": 40, "tie_word_embeddings": False}),
    ("gpt2", {"activation_function": "leaky_relu", "layer_norm_epsilon": 1e-3}),
    ("llama", {"hidden_act": "silu"}),
    ("llama", {"hidden_act": "gelu"}),
    ("llama", {"hidden_act": "gelu_pytorch_tanh", "tie_word_embeddings": True}),
    ("llama", {"hidden_act": "relu", "attention_bias": True}),
    ("llama", {"mlp_bias": True, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    ("llama", {"head_dim": 16}),  # 4 heads x 16 = 64 wide attention on a 32-wide model
    ("mistral", {"sliding_window": 8}),
    ("mistral", {"sliding_window": None, "hidden_act": "gelu", "head_dim": 12}),
    ("qwen2", {}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}),
]


@pytest.mark.parametrize(("family", "fields"), SUPPORTED)
def test_supported_configs_import_with_identical_logits_at_full_context(family, fields):
    hf_model = _hf(family, **fields)
    ours = from_hf(hf_model)
    _assert_same_logits(hf_model, ours)
    again = to_hf(ours)  # and back, into the same family (a Mistral without a window is a Llama)
    assert again.config.model_type == ("llama" if fields.get("sliding_window", 1) is None else family)
    _assert_same_logits(again, ours)


INERT_PERTURBATIONS = {
    "resid_pdrop": 0.3,
    "embd_pdrop": 0.3,
    "attn_pdrop": 0.3,
    "attention_dropout": 0.3,
    "summary_first_dropout": 0.5,
    "summary_type": "last",
    "summary_use_proj": False,
    "summary_activation": "tanh",
    "summary_proj_to_labels": False,
    "reorder_and_upcast_attn": True,
    "pretraining_tp": 2,
    "use_sliding_window": False,
    "max_window_layers": 1,
    "chunk_size_feed_forward": 4,
    "use_cache": False,
    "initializer_range": 0.5,
    "bos_token_id": 3,
    "eos_token_id": 4,
    "pad_token_id": 5,
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_inert_fields_do_not_change_the_computation(family):
    inert = [n for n, rule in field_table()[family].items() if rule.startswith("inert")]
    checked = [n for n in inert if n in INERT_PERTURBATIONS]
    for name in checked:
        hf_model = _hf(family, **{name: INERT_PERTURBATIONS[name]})
        _assert_same_logits(hf_model, from_hf(hf_model))
    # The rest only name, label or shape outputs: they never reach the logits.
    assert set(inert) - set(checked) <= {
        "_name_or_path",
        "architectures",
        "transformers_version",
        "dtype",
        "id2label",
        "label2id",
        "problem_type",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }


REFUSED = [
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx: True"),
    ("gpt2", {"scale_attn_weights": False}, "scale_attn_weights: False"),
    ("gpt2", {"add_cross_attention": True}, "add_cross_attention: True"),
    ("gpt2", {"activation_function": "quick_gelu"}, "activation_function: 'quick_gelu'"),
    ("llama", {"hidden_act": "quick_gelu"}, "hidden_act: 'quick_gelu'"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "rope_type: 'linear'"),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "rope_type: 'yarn'"),
    ("llama", {"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ("llama", {"some_new_switch": 3}, "some_new_switch: 3 is a llama setting lmlab does not know"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}, "layer_types: mixes"),
]


@pytest.mark.parametrize(("family", "fields", "message"), REFUSED)
def test_configs_lmlab_cannot_reproduce_are_refused_in_one_line(family, fields, message):
    hf_model = _hf(family, **fields)
    with pytest.raises(ConfigError) as err:
        from_hf(hf_model)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_windowed_models_export_as_mistral_and_gated_gelu_as_llama():
    torch.manual_seed(0)
    windowed = build_model(tiny_cfg("mistral", max_seq_len=CONTEXT, window=8, vocab_size=61))
    exported = to_hf(windowed)
    assert exported.config.model_type == "mistral" and exported.config.sliding_window == 8
    _assert_same_logits(exported, windowed)
    gated = build_model(tiny_cfg("llama", ffn="geglu", activation="gelu", max_seq_len=CONTEXT, vocab_size=61))
    exported = to_hf(gated)
    assert exported.config.hidden_act == "gelu"
    _assert_same_logits(exported, gated)
