"""Weight-exact conversion between lmlab models and transformers' GPT-2 and Llama layouts.

GPT-2 stores linear layers as `Conv1D` with (in, out) weights, so they are transposed; Llama keeps
separate q/k/v projections, which lmlab fuses into one `qkv` matrix (q rows, then k, then v).
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError, require
from lmlab.export.hf_fields import GPT2_ACT, LLAMA_ACT, model_config
from lmlab.model.build import build_model
from lmlab.model.transformer import CausalLM
from lmlab.registry import ATTN, FFN
from lmlab.runs.checkpoint import load_weights


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


def _llama_keymap(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(hf key, lmlab key) for every Llama/Mistral/Qwen2 tensor except the fused q/k/v."""
    rows = [("model.embed_tokens.weight", "tok_emb.weight"), ("model.norm.weight", "norm_f.weight")]
    for i in range(cfg.n_layer):
        h, b = f"model.layers.{i}", f"blocks.{i}"
        rows += [
            (f"{h}.input_layernorm.weight", f"{b}.norm1.weight"),
            (f"{h}.post_attention_layernorm.weight", f"{b}.norm2.weight"),
        ]
        for hf_name, ours, bias in [
            ("self_attn.o_proj", "attn.proj", cfg.attn_proj_bias),
            ("mlp.gate_proj", "ffn.gate", cfg.ffn_bias),
            ("mlp.up_proj", "ffn.up", cfg.ffn_bias),
            ("mlp.down_proj", "ffn.down", cfg.ffn_bias),
        ]:
            rows.append((f"{h}.{hf_name}.weight", f"{b}.{ours}.weight"))
            if bias:
                rows.append((f"{h}.{hf_name}.bias", f"{b}.{ours}.bias"))
    return rows


def _qkv_names(i: int, kind: str) -> list[str]:
    return [f"model.layers.{i}.self_attn.{p}_proj.{kind}" for p in "qkv"]


def from_hf(hf_model: Any) -> CausalLM:
    """An lmlab CausalLM with exactly the weights and computation of a transformers GPT-2, Llama, Mistral or Qwen2.

    Every config field is mapped, known to be inert, or refused with one line (see `hf_fields`).
    """
    cfg = model_config(hf_model.config)
    family = hf_model.config.model_type
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    if family == "gpt2":
        ours = {dst: (sd[src].t() if conv else sd[src]) for src, dst, conv in _gpt2_keymap(cfg.n_layer)}
    else:
        ours = {dst: sd[src] for src, dst in _llama_keymap(cfg)}
        for i in range(cfg.n_layer):
            ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([sd[n] for n in _qkv_names(i, "weight")])
            if cfg.qkv_bias:
                ours[f"blocks.{i}.attn.qkv.bias"] = torch.cat([sd[n] for n in _qkv_names(i, "bias")])
    ours["lm_head.weight"] = sd.get("lm_head.weight", ours["tok_emb.weight"])
    model = build_model(cfg)
    load_weights(model, ours, f"{family} conversion")
    return model.to(next(iter(sd.values())).dtype)


def target_family(cfg: ModelConfig) -> str:
    """The transformers family whose layout computes exactly this config, or a ConfigError saying why none does."""
    windowed = cfg.window is not None and cfg.window < cfg.max_seq_len  # a window as wide as the context is none
    # blocks declare the transformers layout they compute (registry caps), so a new block can join a family
    dense_attn = ATTN.entry(cfg.attn).caps.get("hf_layout") == "dense"
    ffn_layout = FFN.entry(cfg.ffn).caps.get("hf_layout")
    plain_logits = cfg.mup_base_width in (None, cfg.d_model)  # no family multiplies its logits (muP)
    common = cfg.norm_position == "pre" and dense_attn and cfg.embed == "token" and plain_logits
    biases = (cfg.qkv_bias, cfg.attn_proj_bias, cfg.ffn_bias)
    gpt2_blocks = (cfg.pos, cfg.norm) == ("learned", "layernorm") and ffn_layout == "mlp" and all(biases)
    plain_heads = cfg.head_dim * cfg.n_head == cfg.d_model and cfg.n_kv_head == cfg.n_head
    if common and gpt2_blocks and not windowed and plain_heads and cfg.activation in GPT2_ACT.values():
        return "gpt2"
    gated = ffn_layout == "gated" and gate_activation(cfg) in LLAMA_ACT.values()
    if common and (cfg.pos, cfg.norm) == ("rope", "rmsnorm") and gated and cfg.rope.fraction == 1.0:
        if not windowed and cfg.qkv_bias == cfg.attn_proj_bias:
            return "llama"
        if windowed and not any(biases):
            return "mistral"
        if biases == (True, False, False):
            return "qwen2"
    raise ConfigError(
        f"export: {cfg.arch_name()} has no transformers family; allowed: GPT-2 layout (learned+layernorm+mlp, "
        "bias), Llama (rope+rmsnorm+gated FFN), Mistral (the same with a window, no bias), Qwen2 (q/k/v bias only)"
    )


def gate_activation(cfg: ModelConfig) -> str:
    """The activation on the gate of a gated FFN, as lmlab's config names it."""
    return FFN.get(cfg.ffn).gate_activation(cfg)


# Special token ids are the tokenizer's (an exported run sets its own); a family's defaults (GPT-2's 50256,
# Llama's 1 and 2) may lie outside this vocabulary, or stop transformers' generation at an ordinary token.
NO_SPECIAL_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def hf_config(cfg: ModelConfig, family: str) -> Any:
    """The transformers config of `family` that computes exactly what `cfg` does."""
    transformers = require("transformers", "hf")
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.max_seq_len,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.d_model,
            n_inner=cfg.d_ff,
            activation_function={v: k for k, v in reversed(GPT2_ACT.items())}[cfg.activation],
            layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            tie_word_embeddings=cfg.tie_weights,
            **NO_SPECIAL_TOKENS,
        )
    fields = dict(
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_seq_len,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        hidden_size=cfg.d_model,
        head_dim=cfg.head_dim,
        intermediate_size=cfg.d_ff,
        hidden_act={v: k for k, v in reversed(LLAMA_ACT.items())}[gate_activation(cfg)],
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_weights,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope.theta},
        attention_dropout=cfg.dropout,
        **NO_SPECIAL_TOKENS,
    )
    if family == "llama":
        return transformers.LlamaConfig(**fields, attention_bias=cfg.qkv_bias, mlp_bias=cfg.ffn_bias)
    if family == "mistral":
        return transformers.MistralConfig(**fields, sliding_window=cfg.window)
    windowed = cfg.window is not None and cfg.window < cfg.max_seq_len
    # max_window_layers=0: every layer slides, as lmlab's one window does
    return transformers.Qwen2Config(
        **fields, use_sliding_window=windowed, sliding_window=cfg.window if windowed else None, max_window_layers=0
    )


def to_hf(model: CausalLM) -> Any:
    """The transformers GPT-2, Llama, Mistral or Qwen2 causal LM with exactly this model's weights."""
    transformers = require("transformers", "hf")
    cfg = model.config
    family = target_family(cfg)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config(cfg, family))
    if family == "gpt2":
        theirs = {src: (sd[dst].t() if conv else sd[dst]) for src, dst, conv in _gpt2_keymap(cfg.n_layer)}
    else:
        theirs = {src: sd[dst] for src, dst in _llama_keymap(cfg)}
        hs = cfg.head_dim
        sizes = [cfg.n_head * hs, cfg.n_kv_head * hs, cfg.n_kv_head * hs]
        for i in range(cfg.n_layer):
            for kind in ["weight", "bias"] if cfg.qkv_bias else ["weight"]:
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
