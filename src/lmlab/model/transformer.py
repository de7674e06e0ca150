"""Decoder-only language model assembled from registered blocks."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.config import ModelConfig
from lmlab.model.block import Block
from lmlab.model.flops import flops_per_token
from lmlab.model.generate import generate
from lmlab.model.init import NoRandomInit, init_weights
from lmlab.model.mup import apply_mup, base_config, logit_mult
from lmlab.model.output import ModelOutput


def document_start_slots(input_ids: Tensor, sep: int) -> Tensor:
    """(B, T) slot where each token's document begins: 0, and the slot after every separator."""
    slots = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    begins = torch.zeros_like(input_ids, dtype=torch.bool)
    begins[:, 1:] = input_ids[:, :-1] == sep
    return torch.where(begins, slots, 0).cummax(dim=1).values


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
        self.logit_mult = logit_mult(cfg)  # 1 but under muP
        if self.logit_mult != 1.0:
            classes = {"attn_cls": attn_cls, "ffn_cls": ffn_cls, "norm_cls": norm_cls}
            with torch.device("meta"), NoRandomInit():  # the base width's shapes say which dimensions grow
                base = CausalLM(base_config(cfg), **classes, embed_cls=embed_cls, pos_cls=pos_cls)
            apply_mup(self, base)

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        *,
        cache: list | None = None,
        last_only: bool = False,
        pad: Tensor | None = None,
        doc_sep: int | None = None,
    ) -> ModelOutput:
        """input_ids (B, T) -> logits (B, T, V); loss is cross-entropy against targets (-100 ignored).

        `pad` (B,) is the number of left-padding slots in each row (batched prompts of different
        lengths); padded rows give the logits they would give alone. With `doc_sep` (a packed
        training window), a token attends only within its document, which ends at that separator
        id, and positions restart at every document: each document gives the logits it would alone.
        """
        offset = cache[0].length if cache else 0
        if isinstance(offset, Tensor):  # a static cache's count, which its updates advance in place
            offset = offset.clone()
        T = input_ids.shape[1]
        starts = None
        if doc_sep is not None:
            if cache is not None or pad is not None:
                raise ValueError("doc_sep masks a whole packed window: no cache, no padding")
            starts = document_start_slots(input_ids, doc_sep)
        x = self.pos.embed(self.tok_emb(input_ids), offset, pad, starts)  # (B, T, C)
        if self.training:
            x = self.drop(x)
        pos = self.pos.context(T, offset, input_ids.device, pad, starts)
        for i, block in enumerate(self.blocks):
            x = block(x, pos=pos, cache=cache[i] if cache else None)
        x = self.norm_f(x)
        if last_only and targets is None:
            x = x[:, -1:]
        logits = self.lm_head(x)  # (B, T, V)
        if self.logit_mult != 1.0:
            logits = logits * self.logit_mult
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        aux = [b.ffn.aux_loss for b in self.blocks if getattr(b.ffn, "aux_loss", None) is not None]
        return ModelOutput(logits=logits, loss=loss, aux_loss=sum(aux) if aux else None)

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
        """Sample continuations; see `lmlab.model.generate.generate` for the options."""
        return generate(self, input_ids, max_new_tokens, **kwargs)
