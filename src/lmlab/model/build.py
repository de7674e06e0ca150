"""`build_model`: the model a config describes, wired from the registered block classes."""

from __future__ import annotations

from torch import nn

from lmlab.config import ModelConfig
from lmlab.model.seq2seq import build_seq2seq
from lmlab.model.transformer import CausalLM
from lmlab.registry import ATTN, EMBED, FFN, NORM, POS


def build_transformer(
    cfg: ModelConfig,
    *,
    attn_cls: type | None = None,
    ffn_cls: type | None = None,
    norm_cls: type | None = None,
    embed_cls: type | None = None,
    pos_cls: type | None = None,
) -> CausalLM:
    """A CausalLM from `cfg`, with any block class overridable by a class that follows the contract."""
    return CausalLM(
        cfg,
        attn_cls=attn_cls or ATTN.get(cfg.attn),
        ffn_cls=ffn_cls or FFN.get(cfg.ffn),
        norm_cls=norm_cls or NORM.get(cfg.norm),
        embed_cls=embed_cls or EMBED.get(cfg.embed),
        pos_cls=pos_cls or POS.get(cfg.pos),
    )


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model a config describes: a CausalLM, or a Seq2Seq when `cfg.arch == "seq2seq"`."""
    if cfg.arch == "seq2seq":
        return build_seq2seq(cfg)
    return build_transformer(cfg)
