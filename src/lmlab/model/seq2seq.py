"""Encoder-decoder transformer (Vaswani et al. 2017) assembled from the same registered blocks as CausalLM.

Encoder layers run the chosen attention bidirectionally with padded source keys hidden; decoder
layers run it causally, then attend over the encoder output through a cross-attention that
borrows the chosen attention's core (`attend`), then the FFN. Pre- or post-norm as configured;
pre-norm stacks end with a norm. `build_model(cfg)` returns a `Seq2Seq` when `cfg.arch == "seq2seq"`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.attn.base import key_padding_mask
from lmlab.config import ModelConfig
from lmlab.model.init import init_weights
from lmlab.model.output import ModelOutput
from lmlab.pos.base import PosContext
from lmlab.registry import ATTN, EMBED, FFN, NORM, POS


class CrossAttention(nn.Module):
    """Queries from the decoder, keys/values from the encoder output, no positions, padded sources hidden.

    The scores are computed by the self-attention's own core function (`core` of the registered
    class: explicit softmax for mha, fused for sdpa); only the projections differ.
    """

    def __init__(self, cfg: ModelConfig, core: Callable[..., Tensor]) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.core, self.dropout = core, cfg.dropout
        self.q = nn.Linear(cfg.d_model, self.n_head * self.head_dim, bias=cfg.qkv_bias)
        self.kv = nn.Linear(cfg.d_model, 2 * self.n_kv_head * self.head_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=cfg.attn_proj_bias)
        self.proj.residual_projection = True

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, nkv, S, hs) of the encoder output: computed once per source when decoding."""
        B, S, _ = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.n_kv_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], key_mask: Tensor | None) -> Tensor:
        """(B, T, C) decoder states -> (B, T, C)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        y = self.core(q, kv[0], kv[1], key_mask, False, self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class EncoderLayer(nn.Module):
    """Bidirectional self-attention and FFN, each with a residual; pre- or post-norm."""

    def __init__(self, cfg: ModelConfig, *, attn_cls: type, ffn_cls: type, norm_cls: type) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.ffn = norm_cls(cfg), attn_cls(cfg), norm_cls(cfg), ffn_cls(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.norm_position == "pre"

    def forward(self, x: Tensor, *, pos: PosContext, key_mask: Tensor) -> Tensor:
        """(B, S, C) -> (B, S, C)."""
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), pos=pos, key_mask=key_mask, causal=False))
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, pos=pos, key_mask=key_mask, causal=False)))
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, FFN; pre- or post-norm."""

    def __init__(self, cfg: ModelConfig, *, attn_cls: type, ffn_cls: type, norm_cls: type) -> None:
        super().__init__()
        self.norm1, self.self_attn = norm_cls(cfg), attn_cls(cfg)
        self.norm2, self.cross_attn = norm_cls(cfg), CrossAttention(cfg, attn_cls.core)
        self.norm3, self.ffn = norm_cls(cfg), ffn_cls(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.norm_position == "pre"

    def forward(
        self,
        y: Tensor,
        *,
        pos: PosContext,
        kv: tuple[Tensor, Tensor],
        src_mask: Tensor,
        tgt_mask: Tensor | None = None,
        cache=None,
    ) -> Tensor:
        """(B, T, C) -> (B, T, C); with a cache, y holds the new target tokens only."""
        d = self.drop
        if self.pre_norm:
            y = y + d(self.self_attn(self.norm1(y), pos=pos, cache=cache, key_mask=tgt_mask))
            y = y + d(self.cross_attn(self.norm2(y), kv, src_mask))
            return y + d(self.ffn(self.norm3(y)))
        y = self.norm1(y + d(self.self_attn(y, pos=pos, cache=cache, key_mask=tgt_mask)))
        y = self.norm2(y + d(self.cross_attn(y, kv, src_mask)))
        return self.norm3(y + d(self.ffn(y)))


class Seq2Seq(nn.Module):
    """Source embedding -> encoder -> memory; target embedding -> decoder (self + cross) -> LM head."""

    def __init__(
        self, cfg: ModelConfig, *, attn_cls: type, ffn_cls: type, norm_cls: type, embed_cls: type, pos_cls: type
    ) -> None:
        super().__init__()
        self.config = cfg
        blocks = {"attn_cls": attn_cls, "ffn_cls": ffn_cls, "norm_cls": norm_cls}
        self.tgt_emb = embed_cls(cfg)
        src_cfg = cfg.model_copy(update={"vocab_size": cfg.src_vocab_size})
        self.src_emb = self.tgt_emb if cfg.share_embeddings else embed_cls(src_cfg)
        self.enc_pos, self.dec_pos = pos_cls(cfg), pos_cls(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg, **blocks) for _ in range(cfg.n_enc_layer))
        self.decoder = nn.ModuleList(DecoderLayer(cfg, **blocks) for _ in range(cfg.n_layer))
        pre = cfg.norm_position == "pre"
        self.enc_norm = norm_cls(cfg) if pre else nn.Identity()
        self.dec_norm = norm_cls(cfg) if pre else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(lambda m: init_weights(m, cfg, embeddings=(self.tgt_emb, self.src_emb)))
        if cfg.tie_weights:
            self.lm_head.weight = self.tgt_emb.weight

    def encode(self, src_ids: Tensor, src_valid: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) ids and validity -> memory (B, S, C) and the source key mask (B, 1, 1, S)."""
        x = self.drop(self.enc_pos.embed(self.src_emb(src_ids), 0))
        key_mask = key_padding_mask(src_valid, x.dtype)
        pos = self.enc_pos.context(src_ids.shape[1], 0, src_ids.device)
        for layer in self.encoder:
            x = layer(x, pos=pos, key_mask=key_mask)
        return self.enc_norm(x), key_mask

    def cross_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every decoder layer's cross-attention keys/values of `memory` (cached across decode steps)."""
        return [layer.cross_attn.memory_kv(memory) for layer in self.decoder]

    def decode(
        self,
        tgt_ids: Tensor,
        kv: list[tuple[Tensor, Tensor]],
        src_mask: Tensor,
        *,
        tgt_valid: Tensor | None = None,
        cache: list | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Target ids (B, T) -> logits (B, T, V); with a cache, only the new tokens are passed."""
        offset = cache[0].length if cache else 0
        y = self.drop(self.dec_pos.embed(self.tgt_emb(tgt_ids), offset))
        pos = self.dec_pos.context(tgt_ids.shape[1], offset, tgt_ids.device)
        tgt_mask = None if tgt_valid is None else key_padding_mask(tgt_valid, y.dtype)
        for i, layer in enumerate(self.decoder):
            y = layer(y, pos=pos, kv=kv[i], src_mask=src_mask, tgt_mask=tgt_mask, cache=cache[i] if cache else None)
        y = self.dec_norm(y)
        return self.lm_head(y[:, -1:] if last_only else y)

    def forward(
        self,
        src_ids: Tensor,
        tgt_in: Tensor,
        src_valid: Tensor | None = None,
        tgt_valid: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> ModelOutput:
        """Teacher-forced logits (B, T, V); loss is cross-entropy against targets (-100 ignored)."""
        if src_valid is None:
            src_valid = torch.ones_like(src_ids, dtype=torch.bool)
        memory, src_mask = self.encode(src_ids, src_valid)
        logits = self.decode(tgt_in, self.cross_kv(memory), src_mask, tgt_valid=tgt_valid)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        aux = [m.aux_loss for m in self.modules() if m is not self and getattr(m, "aux_loss", None) is not None]
        return ModelOutput(logits=logits, loss=loss, aux_loss=sum(aux) if aux else None)

    def new_cache(self, batch: int, max_len: int) -> list:
        """One empty self-attention KV cache per decoder layer."""
        p = self.lm_head.weight
        return [layer.self_attn.new_cache(batch, max_len, p.device, p.dtype) for layer in self.decoder]

    def num_params(self) -> int:
        """Parameter count (shared and tied weights once)."""
        return sum(p.numel() for p in self.parameters())


def forward_batch(model: nn.Module, batch: dict[str, Tensor]) -> ModelOutput:
    """Teacher-forced output on a (X_ids, M_src, Y_in, Y_out, M_tgt) batch, loss over unpadded targets."""
    targets = batch["Y_out"].long().masked_fill(~batch["M_tgt"].bool(), -100)
    return model(batch["X_ids"].long(), batch["Y_in"].long(), batch["M_src"], batch["M_tgt"], targets=targets)


def seq2seq_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy over unpadded target positions of a batch, plus any auxiliary loss."""
    out = forward_batch(model, batch)
    return out.loss if out.aux_loss is None else out.loss + out.aux_loss


def build_seq2seq(cfg: ModelConfig) -> Seq2Seq:
    """The encoder-decoder `cfg` describes."""
    return Seq2Seq(
        cfg,
        attn_cls=ATTN.get(cfg.attn),
        ffn_cls=FFN.get(cfg.ffn),
        norm_cls=NORM.get(cfg.norm),
        embed_cls=EMBED.get(cfg.embed),
        pos_cls=POS.get(cfg.pos),
    )


def to_reference(tensors: dict[str, Tensor], cfg: ModelConfig) -> dict:
    """Parameters (or their gradients) under the NumPy reference's names and layout (float64 arrays).

    torch's fused qkv / kv projections are split into q, k, v; Linear weights are transposed to
    the reference's (in, out). For untied, unshared pre-norm models with biases, as the reference is.
    """
    if (
        cfg.tie_weights
        or cfg.share_embeddings
        or cfg.norm_position != "pre"
        or not (cfg.qkv_bias and cfg.attn_proj_bias and cfg.ffn_bias)
    ):
        raise ValueError("to_reference: needs tie_weights=false, share_embeddings=false, pre-norm and bias=true")
    C = cfg.d_model

    def a(name: str):
        return tensors[name].detach().double().cpu().numpy()

    def linear(out: dict, ref: str, name: str, rows: slice = slice(None)) -> None:
        out[f"{ref}.weight"] = a(f"{name}.weight")[rows].T.copy()
        out[f"{ref}.bias"] = a(f"{name}.bias")[rows].copy()

    def norm(out: dict, ref: str, name: str) -> None:
        out[f"{ref}.weight"], out[f"{ref}.bias"] = a(f"{name}.weight"), a(f"{name}.bias")

    def ffn(out: dict, ref: str, name: str) -> None:
        linear(out, f"{ref}.fc", f"{name}.fc")
        linear(out, f"{ref}.proj", f"{name}.proj")

    def self_attn(out: dict, ref: str, name: str) -> None:
        for j, part in enumerate("qkv"):
            linear(out, f"{ref}.{part}", f"{name}.qkv", slice(j * C, (j + 1) * C))
        linear(out, f"{ref}.o", f"{name}.proj")

    out: dict = {"encoder.emb.weight": a("src_emb.weight"), "decoder.emb.weight": a("tgt_emb.weight")}
    for i in range(cfg.n_enc_layer):
        r, t = f"encoder.layers.{i}", f"encoder.{i}"
        norm(out, f"{r}.ln1", f"{t}.norm1")
        self_attn(out, f"{r}.attn", f"{t}.attn")
        norm(out, f"{r}.ln2", f"{t}.norm2")
        ffn(out, f"{r}.ffn", f"{t}.ffn")
    norm(out, "encoder.ln_f", "enc_norm")
    for i in range(cfg.n_layer):
        r, t = f"decoder.layers.{i}", f"decoder.{i}"
        norm(out, f"{r}.ln1", f"{t}.norm1")
        self_attn(out, f"{r}.self_attn", f"{t}.self_attn")
        norm(out, f"{r}.ln2", f"{t}.norm2")
        linear(out, f"{r}.cross_attn.q", f"{t}.cross_attn.q")
        linear(out, f"{r}.cross_attn.k", f"{t}.cross_attn.kv", slice(0, C))
        linear(out, f"{r}.cross_attn.v", f"{t}.cross_attn.kv", slice(C, 2 * C))
        linear(out, f"{r}.cross_attn.o", f"{t}.cross_attn.proj")
        norm(out, f"{r}.ln3", f"{t}.norm3")
        ffn(out, f"{r}.ffn", f"{t}.ffn")
    norm(out, "decoder.ln_f", "dec_norm")
    out["decoder.out.weight"] = a("lm_head.weight").T.copy()
    return out
