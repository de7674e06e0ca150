"""Decoder-only language model assembled from registered blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.config import ModelConfig
from lmlab.model.block import Block
from lmlab.model.flops import flops_per_token
from lmlab.registry import ATTN, EMBED, FFN, NORM, POS


@dataclass
class CausalLMOutput:
    """Logits (B, T, V), the mean next-token loss when targets were given, and any auxiliary loss."""

    logits: Tensor
    loss: Tensor | None = None
    aux_loss: Tensor | None = None


def init_weights(module: nn.Module, cfg: ModelConfig, embeddings: tuple[nn.Module, ...] = ()) -> None:
    """GPT-2 init: N(0, init_std); residual projections scaled by 1/sqrt(2 n_layer) (GPT-2 §2.3)."""
    std = cfg.init_std
    if isinstance(module, nn.Linear):
        scale = 1 / math.sqrt(2 * cfg.n_layer) if getattr(module, "residual_projection", False) else 1.0
        nn.init.normal_(module.weight, mean=0.0, std=std * scale)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding) or any(module is e for e in embeddings):
        nn.init.normal_(module.weight, mean=0.0, std=std)


class CausalLM(nn.Module):
    """Embedding -> positions -> n_layer Blocks -> final norm (pre-norm only) -> LM head."""

    def __init__(
        self, cfg: ModelConfig, *, attn_cls: type, ffn_cls: type, norm_cls: type, embed_cls: type, pos_cls: type
    ) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = embed_cls(cfg)
        self.pos = pos_cls(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg, attn_cls=attn_cls, ffn_cls=ffn_cls, norm_cls=norm_cls) for _ in range(cfg.n_layer)
        )
        # Post-norm already normalises each block's output, as in the original Transformer.
        self.norm_f = norm_cls(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(lambda m: init_weights(m, cfg, embeddings=(self.tok_emb,)))
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        *,
        cache: list | None = None,
        last_only: bool = False,
        pad: Tensor | None = None,
    ) -> CausalLMOutput:
        """input_ids (B, T) -> logits (B, T, V); loss is cross-entropy against targets (-100 ignored).

        `pad` (B,) is the number of left-padding slots in each row (batched prompts of different
        lengths); padded rows give the logits they would give alone.
        """
        offset = cache[0].length if cache else 0
        T = input_ids.shape[1]
        x = self.pos.embed(self.tok_emb(input_ids), offset, pad)  # (B, T, C)
        if self.training:
            x = self.drop(x)
        pos = self.pos.context(T, offset, input_ids.device, pad)
        for i, block in enumerate(self.blocks):
            x = block(x, pos=pos, cache=cache[i] if cache else None)
        x = self.norm_f(x)
        if last_only and targets is None:
            x = x[:, -1:]
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        aux = [b.ffn.aux_loss for b in self.blocks if getattr(b.ffn, "aux_loss", None) is not None]
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=sum(aux) if aux else None)

    def router_stats(self) -> dict[str, list[int]]:
        """Tokens routed to each expert in the last forward, per MoE layer (empty without MoE)."""
        return {
            f"layer{i}": b.ffn.tokens_per_expert.tolist()
            for i, b in enumerate(self.blocks)
            if hasattr(b.ffn, "tokens_per_expert")
        }

    def new_cache(self, batch: int, max_len: int) -> list:
        """One empty KV cache per layer, sized for `max_len` positions."""
        p = self.lm_head.weight
        return [b.attn.new_cache(batch, max_len, p.device, p.dtype) for b in self.blocks]

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); `non_embedding` drops token and position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + sum(p.numel() for p in self.pos.parameters())
            if not self.config.tie_weights:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None, *, training: bool = False) -> int:
        """Forward (or training) FLOPs per token at context `seq_len` (default max_seq_len)."""
        return flops_per_token(self.config, seq_len or self.config.max_seq_len, training=training)

    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs) -> Tensor:
        """Sample continuations; see `lmlab.infer.generate.generate` for the options."""
        from lmlab.infer.generate import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)


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
        from lmlab.model.seq2seq import build_seq2seq

        return build_seq2seq(cfg)
    return build_transformer(cfg)
