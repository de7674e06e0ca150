"""Every field of a transformers GPT-2, Llama, Mistral or Qwen2 config, and what an import does with it.

A field is mapped onto the lmlab config, known not to change the logits (inert, with the reason),
or restricted to the values lmlab computes exactly; any other value is refused with one line that
names the field and the value. A field this table does not know is accepted only at its family's
default value (a new transformers field at its default keeps the computation the table was
checked against), so nothing is ever converted approximately.
"""

from __future__ import annotations

from typing import Any

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError

# Fields of every transformers config (PretrainedConfig) and of the four families' causal LMs.
COMMON_INERT = {
    "_name_or_path": "where the checkpoint came from",
    "architectures": "the class names to load; the family is read from model_type",
    "transformers_version": "the library version that wrote it",
    "dtype": "the stored dtype; lmlab keeps the weights' values and converts to float32",
    "chunk_size_feed_forward": "chunking the feed-forward over positions gives the same result",
    "id2label": "labels of a classification head, not of the LM",
    "label2id": "labels of a classification head, not of the LM",
    "problem_type": "loss of a classification head, not of the LM",
    "output_attentions": "what the forward returns, not what it computes",
    "output_hidden_states": "what the forward returns, not what it computes",
    "return_dict": "what the forward returns, not what it computes",
    "use_cache": "the KV cache changes speed, not the logits",
    "initializer_range": "used to initialise, not to compute",
    "bos_token_id": "a tokenizer fact; the run's tokenizer carries it",
    "eos_token_id": "a tokenizer fact; the run's tokenizer carries it",
    "pad_token_id": "a tokenizer fact; the run's tokenizer carries it",
}
COMMON_FIXED = {"is_encoder_decoder": (False,)}
DROPOUT = "dropout acts only in training; the imported model.dropout is 0 (set it to fine-tune)"

GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
GPT2_ACT |= {"silu": "silu", "swish": "silu", "leaky_relu": "leaky_relu"}
LLAMA_ACT = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
LLAMA_ACT |= {"relu": "relu", "leaky_relu": "leaky_relu"}

LLAMA_MAPPED = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "rope_parameters",
]

FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {
        "mapped": [
            "model_type",
            "vocab_size",
            "n_positions",
            "n_embd",
            "n_layer",
            "n_head",
            "n_inner",
            "activation_function",
            "layer_norm_epsilon",
            "tie_word_embeddings",
        ],
        "inert": {
            "resid_pdrop": DROPOUT,
            "embd_pdrop": DROPOUT,
            "attn_pdrop": DROPOUT,
            "summary_first_dropout": DROPOUT,
            "summary_type": "settings of GPT2DoubleHeadsModel's classification head, not of the LM",
            "summary_use_proj": "settings of GPT2DoubleHeadsModel's classification head, not of the LM",
            "summary_activation": "settings of GPT2DoubleHeadsModel's classification head, not of the LM",
            "summary_proj_to_labels": "settings of GPT2DoubleHeadsModel's classification head, not of the LM",
            "reorder_and_upcast_attn": "scales before the product and upcasts the softmax: the same math",
        },
        "fixed": {
            "scale_attn_weights": (True,),
            "scale_attn_by_inverse_layer_idx": (False,),
            "add_cross_attention": (False,),
        },
    },
    "llama": {
        "mapped": [*LLAMA_MAPPED, "attention_bias", "mlp_bias"],
        "inert": {
            "attention_dropout": DROPOUT,
            "pretraining_tp": "splits the projections into slices whose results are concatenated: the same math",
        },
        "fixed": {},
    },
    "mistral": {
        "mapped": [*LLAMA_MAPPED, "sliding_window"],
        "inert": {"attention_dropout": DROPOUT},
        "fixed": {},
    },
    "qwen2": {
        "mapped": [*LLAMA_MAPPED, "layer_types", "sliding_window"],
        "inert": {
            "attention_dropout": DROPOUT,
            "use_sliding_window": "read through layer_types, which transformers derives from it",
            "max_window_layers": "read through layer_types, which transformers derives from it",
        },
        "fixed": {},
    },
}


def field_rule(family: str, name: str) -> str:
    """How an import treats config field `name` of `family`: 'mapped', 'inert: why', 'allowed: ...' or 'unknown'."""
    fam = FAMILIES[family]
    if name in fam["mapped"]:
        return "mapped"
    inert = {**COMMON_INERT, **fam["inert"]}
    if name in inert:
        return f"inert: {inert[name]}"
    fixed = {**COMMON_FIXED, **fam["fixed"]}
    if name in fixed:
        return f"allowed: {', '.join(map(repr, fixed[name]))}"
    return "unknown"


def check_fields(hf_cfg: Any) -> str:
    """The family of `hf_cfg`, after refusing every field value the import cannot reproduce exactly."""
    family = getattr(hf_cfg, "model_type", "")
    if family not in FAMILIES:
        raise ConfigError(f"model_type: '{family}' cannot be imported; allowed: {', '.join(FAMILIES)}")
    defaults = type(hf_cfg)().to_dict()
    fixed = {**COMMON_FIXED, **FAMILIES[family]["fixed"]}
    for name, value in hf_cfg.to_dict().items():
        rule = field_rule(family, name)
        if rule.startswith("allowed") and value not in fixed[name]:
            raise ConfigError(f"{name}: {value!r} has no exact lmlab equivalent; allowed: {rule[9:]}")
        if rule == "unknown" and value != defaults.get(name):  # absent from the defaults: only None passes
            raise ConfigError(f"{name}: {value!r} is a {family} setting lmlab does not know; allowed: its default")
    return family


def _pick(table: dict[str, str], field: str, value: str) -> str:
    if value not in table:
        raise ConfigError(f"{field}: '{value}' has no exact lmlab equivalent; allowed: {', '.join(table)}")
    return table[value]


def _rope_theta(hf_cfg: Any) -> float:
    rope = dict(getattr(hf_cfg, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_parameters.rope_type: '{rope['rope_type']}' is not implemented; allowed: default")
    extra = sorted(set(rope) - {"rope_type", "rope_theta"})
    if extra:
        raise ConfigError(f"rope_parameters.{extra[0]}: {rope[extra[0]]!r} is not implemented; allowed: absent")
    return float(rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0)))


def _window(hf_cfg: Any, family: str) -> int | None:
    """The one sliding window of every layer, or None (a Qwen2 mixing full and sliding layers is refused)."""
    if family == "mistral":
        return hf_cfg.sliding_window
    if family != "qwen2":
        return None
    kinds = set(getattr(hf_cfg, "layer_types", None) or ["full_attention"])
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return hf_cfg.sliding_window
    raise ConfigError(f"layer_types: mixes {sorted(kinds)}; allowed: one kind for every layer (lmlab has one window)")


def model_config(hf_cfg: Any) -> ModelConfig:
    """The lmlab config that computes exactly what the transformers config `hf_cfg` does."""
    family = check_fields(hf_cfg)
    if family == "gpt2":
        return ModelConfig.from_preset(
            "gpt2",
            vocab_size=hf_cfg.vocab_size,
            max_seq_len=hf_cfg.n_positions,
            n_layer=hf_cfg.n_layer,
            n_head=hf_cfg.n_head,
            d_model=hf_cfg.n_embd,
            d_ff=hf_cfg.n_inner or 4 * hf_cfg.n_embd,
            activation=_pick(GPT2_ACT, "activation_function", hf_cfg.activation_function),
            norm_eps=hf_cfg.layer_norm_epsilon,
            tie_weights=hf_cfg.tie_word_embeddings,
        )
    act = _pick(LLAMA_ACT, "hidden_act", hf_cfg.hidden_act)
    window = _window(hf_cfg, family)
    qkv_bias = proj_bias = mlp_bias = False
    if family == "llama":
        qkv_bias = proj_bias = bool(hf_cfg.attention_bias)
        mlp_bias = bool(hf_cfg.mlp_bias)
    elif family == "qwen2":
        qkv_bias = True  # Qwen2 projects q, k and v with a bias, the output and the MLP without
    return ModelConfig.from_preset(
        "llama",
        vocab_size=hf_cfg.vocab_size,
        max_seq_len=hf_cfg.max_position_embeddings,
        n_layer=hf_cfg.num_hidden_layers,
        n_head=hf_cfg.num_attention_heads,
        n_kv_head=hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads,
        d_model=hf_cfg.hidden_size,
        head_dim=getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads,
        d_ff=hf_cfg.intermediate_size,
        ffn="swiglu" if act == "silu" else "gated_mlp",
        activation=act,
        norm_eps=hf_cfg.rms_norm_eps,
        bias=False,
        qkv_bias=qkv_bias,
        attn_proj_bias=proj_bias,
        ffn_bias=mlp_bias,
        tie_weights=hf_cfg.tie_word_embeddings,
        attn="sdpa" if window is None else "sliding_window",
        window=window,
        rope={"theta": _rope_theta(hf_cfg)},
    )


def field_table() -> dict[str, dict[str, str]]:
    """{family: {field: rule}} for every field of each family's default config (the documentation's table)."""
    import transformers

    classes = {"gpt2": "GPT2Config", "llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config"}
    return {
        family: {name: field_rule(family, name) for name in getattr(transformers, cls)().to_dict()}
        for family, cls in classes.items()
    }
