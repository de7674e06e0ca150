"""Weight-exact conversion between lmlab models and transformers' GPT-2 and Llama layouts.

GPT-2 stores linear layers as `Conv1D` with (in, out) weights, so they are transposed; Llama keeps
separate q/k/v projections, which lmlab fuses into one `qkv` matrix (q rows, then k, then v).
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError, require
from lmlab.model.transformer import CausalLM, build_model
from lmlab.trainer.checkpoint import load_weights

_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def _gpt2_config(hf_cfg: Any) -> ModelConfig:
    act = hf_cfg.activation_function
    if act not in _GPT2_ACT:
        raise ConfigError(f"activation_function: '{act}' has no lmlab equivalent; allowed: {', '.join(_GPT2_ACT)}")
    return ModelConfig.from_preset(
        "gpt2",
        vocab_size=hf_cfg.vocab_size,
        max_seq_len=hf_cfg.n_positions,
        n_layer=hf_cfg.n_layer,
        n_head=hf_cfg.n_head,
        d_model=hf_cfg.n_embd,
        d_ff=hf_cfg.n_inner or 4 * hf_cfg.n_embd,
        activation=_GPT2_ACT[act],
        norm_eps=hf_cfg.layer_norm_epsilon,
        tie_weights=hf_cfg.tie_word_embeddings,
    )


def _llama_config(hf_cfg: Any) -> ModelConfig:
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    if head_dim * hf_cfg.num_attention_heads != hf_cfg.hidden_size:
        raise ConfigError(f"head_dim: {head_dim} x {hf_cfg.num_attention_heads} heads != hidden_size; not supported")
    if getattr(hf_cfg, "mlp_bias", False) != getattr(hf_cfg, "attention_bias", False):
        raise ConfigError("attention_bias/mlp_bias: lmlab has one `bias` switch; allowed: both equal")
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_parameters.rope_type: '{rope['rope_type']}' is not supported; allowed: default")
    theta = rope.get("rope_theta", getattr(hf_cfg, "rope_theta", 10000.0))
    return ModelConfig.from_preset(
        "llama",
        vocab_size=hf_cfg.vocab_size,
        max_seq_len=hf_cfg.max_position_embeddings,
        n_layer=hf_cfg.num_hidden_layers,
        n_head=hf_cfg.num_attention_heads,
        n_kv_head=hf_cfg.num_key_value_heads,
        d_model=hf_cfg.hidden_size,
        d_ff=hf_cfg.intermediate_size,
        norm_eps=hf_cfg.rms_norm_eps,
        bias=bool(getattr(hf_cfg, "attention_bias", False)),
        tie_weights=hf_cfg.tie_word_embeddings,
        rope={"theta": theta},
    )


def _gpt2_keymap(n_layer: int) -> list[tuple[str, str, bool]]:
    """(hf key, lmlab key, transpose) for every GPT-2 tensor."""
    rows = [("transformer.wte.weight", "tok_emb.weight", False), ("transformer.wpe.weight", "pos.wpe.weight", False)]
    for i in range(n_layer):
        h, b = f"transformer.h.{i}", f"blocks.{i}"
        for hf_name, ours, conv in [
            ("ln_1", "norm1", False),
            ("attn.c_attn", "attn.qkv", True),
            ("attn.c_proj", "attn.proj", True),
            ("ln_2", "norm2", False),
            ("mlp.c_fc", "ffn.fc", True),
            ("mlp.c_proj", "ffn.proj", True),
        ]:
            rows += [
                (f"{h}.{hf_name}.weight", f"{b}.{ours}.weight", conv),
                (f"{h}.{hf_name}.bias", f"{b}.{ours}.bias", False),
            ]
    rows += [("transformer.ln_f.weight", "norm_f.weight", False), ("transformer.ln_f.bias", "norm_f.bias", False)]
    return rows


def _llama_keymap(n_layer: int, bias: bool) -> list[tuple[str, str]]:
    """(hf key, lmlab key) for every Llama tensor except the fused q/k/v."""
    rows = [("model.embed_tokens.weight", "tok_emb.weight"), ("model.norm.weight", "norm_f.weight")]
    for i in range(n_layer):
        h, b = f"model.layers.{i}", f"blocks.{i}"
        rows += [
            (f"{h}.input_layernorm.weight", f"{b}.norm1.weight"),
            (f"{h}.post_attention_layernorm.weight", f"{b}.norm2.weight"),
        ]
        for hf_name, ours in [
            ("self_attn.o_proj", "attn.proj"),
            ("mlp.gate_proj", "ffn.gate"),
            ("mlp.up_proj", "ffn.up"),
            ("mlp.down_proj", "ffn.down"),
        ]:
            rows.append((f"{h}.{hf_name}.weight", f"{b}.{ours}.weight"))
            if bias:
                rows.append((f"{h}.{hf_name}.bias", f"{b}.{ours}.bias"))
    return rows


def _qkv_names(i: int, kind: str) -> list[str]:
    return [f"model.layers.{i}.self_attn.{p}_proj.{kind}" for p in "qkv"]


def hf_family(hf_model: Any) -> str:
    """'gpt2' or 'llama' from a transformers model's config."""
    family = getattr(hf_model.config, "model_type", "")
    if family not in ("gpt2", "llama"):
        raise ConfigError(f"model_type: '{family}' cannot be imported; allowed: gpt2, llama")
    return family


def from_hf(hf_model: Any) -> CausalLM:
    """An lmlab CausalLM with exactly the weights of a transformers GPT-2 or Llama causal LM."""
    family = hf_family(hf_model)
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    if family == "gpt2":
        cfg = _gpt2_config(hf_model.config)
        ours = {dst: (sd[src].t() if conv else sd[src]) for src, dst, conv in _gpt2_keymap(cfg.n_layer)}
    else:
        cfg = _llama_config(hf_model.config)
        ours = {dst: sd[src] for src, dst in _llama_keymap(cfg.n_layer, cfg.bias)}
        for i in range(cfg.n_layer):
            ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([sd[n] for n in _qkv_names(i, "weight")])
            if cfg.bias:
                ours[f"blocks.{i}.attn.qkv.bias"] = torch.cat([sd[n] for n in _qkv_names(i, "bias")])
    ours["lm_head.weight"] = sd.get("lm_head.weight", ours["tok_emb.weight"])
    model = build_model(cfg)
    load_weights(model, ours, f"{family} conversion")
    return model.to(next(iter(sd.values())).dtype)


def target_family(cfg: ModelConfig) -> str:
    """The transformers family whose layout this config matches exactly, or a ConfigError saying why not."""
    common = cfg.norm_position == "pre" and cfg.attn in ("mha", "sdpa") and cfg.embed == "token"
    gpt2_blocks = (cfg.pos, cfg.norm, cfg.ffn) == ("learned", "layernorm", "mlp") and cfg.bias
    if common and gpt2_blocks and cfg.n_kv_head == cfg.n_head and cfg.activation != "leaky_relu":
        return "gpt2"
    if common and (cfg.pos, cfg.norm, cfg.ffn) == ("rope", "rmsnorm", "swiglu") and cfg.rope.fraction == 1.0:
        return "llama"
    raise ConfigError(
        f"export: {cfg.arch_name()} has no transformers family; allowed: GPT-2 layout "
        "(learned+layernorm+mlp, bias) or Llama layout (rope+rmsnorm+swiglu)"
    )


def to_hf(model: CausalLM) -> Any:
    """The transformers GPT2LMHeadModel or LlamaForCausalLM with exactly this model's weights."""
    transformers = require("transformers", "hf")
    cfg = model.config
    family = target_family(cfg)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if family == "gpt2":
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[cfg.activation]
        hf_cfg = transformers.GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.max_seq_len,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.d_model,
            n_inner=cfg.d_ff,
            activation_function=act,
            layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            tie_word_embeddings=cfg.tie_weights,
        )
        hf_model = transformers.GPT2LMHeadModel(hf_cfg)
        theirs = {src: (sd[dst].t() if conv else sd[dst]) for src, dst, conv in _gpt2_keymap(cfg.n_layer)}
    else:
        hf_cfg = transformers.LlamaConfig(
            vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_seq_len,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_kv_head,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff,
            rms_norm_eps=cfg.norm_eps,
            attention_bias=cfg.bias,
            mlp_bias=cfg.bias,
            tie_word_embeddings=cfg.tie_weights,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope.theta},
            attention_dropout=cfg.dropout,
        )
        hf_model = transformers.LlamaForCausalLM(hf_cfg)
        theirs = {src: sd[dst] for src, dst in _llama_keymap(cfg.n_layer, cfg.bias)}
        hs = cfg.head_dim
        sizes = [cfg.n_head * hs, cfg.n_kv_head * hs, cfg.n_kv_head * hs]
        for i in range(cfg.n_layer):
            kinds = ["weight", "bias"] if cfg.bias else ["weight"]
            for kind in kinds:
                for name, part in zip(_qkv_names(i, kind), sd[f"blocks.{i}.attn.qkv.{kind}"].split(sizes), strict=True):
                    theirs[name] = part
    theirs["lm_head.weight"] = sd["lm_head.weight"]
    missing, unexpected = hf_model.load_state_dict(theirs, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise ConfigError(f"weights: conversion left missing={missing} unexpected={unexpected}")
    if cfg.tie_weights:
        hf_model.tie_weights()
    return hf_model.to(sd["lm_head.weight"].dtype).eval()
