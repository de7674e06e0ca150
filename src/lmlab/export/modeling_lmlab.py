"""An lmlab composition as a transformers model, for `trust_remote_code=True`; needs only torch and transformers.

`lmlab export --format hf` copies this file beside `config.json` and `model.safetensors` when a
run's blocks have no transformers family (MLA, ALiBi, sliding windows, gated FFNs on GPT-2...).
The config's `lmlab` entry is the run's model config; parameter names are lmlab's own, so the
weights load unchanged. It is a second, deliberately plain implementation of the blocks it
supports (attention mha / sdpa / sliding_window / mla; positions learned / sinusoidal / rope /
alibi / none; norms layernorm / layernorm_nobias / rmsnorm; FFNs mlp / gated_mlp / swiglu /
geglu): the export only succeeds when its logits match lmlab's. `generate` decodes with
transformers' cache (a `DynamicCache`, passed as `cache` or `past_key_values`, whichever the
installed version names it), takes left-padded batches through
`attention_mask` (positions count from each row's first real token), and past `max_seq_len`
slides the context and recomputes it, as lmlab's own decoding does, so it emits lmlab's tokens.
`LmlabForSeq2SeqLM` is lmlab's encoder-decoder for `AutoModelForSeq2SeqLM`, caching the decoder's
self-attention and each layer's cross-attention keys and values (an `EncoderDecoderCache`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, Seq2SeqLMOutput

# transformers renamed `past_key_values` to `cache` (5.x); this file speaks whichever the installed one uses.
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}


class LmlabConfig(PretrainedConfig):
    """Holds the lmlab model config (`lmlab`) plus the usual transformers size fields."""

    model_type = "lmlab"

    def __init__(self, lmlab: dict | None = None, **kwargs) -> None:
        self.lmlab = dict(lmlab or {})
        c = self.lmlab
        self.vocab_size = c.get("vocab_size", 256)
        self.hidden_size = c.get("d_model", 128)
        self.num_hidden_layers = c.get("n_layer", 4)
        self.num_attention_heads = c.get("n_head", 4)
        self.max_position_embeddings = c.get("max_seq_len", 256)
        kwargs["tie_word_embeddings"] = False  # tying is done in forward, from lmlab's tie_weights
        super().__init__(**kwargs)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def head_dim(c: dict) -> int:
    """Width of one attention head (explicit, or d_model / n_head)."""
    return c.get("head_dim") or c["d_model"] // c["n_head"]


def make_norm(c: dict, dim: int | None = None) -> nn.Module:
    """The config's norm over `dim` (default d_model)."""
    dim = dim or c["d_model"]
    if c["norm"] == "rmsnorm":
        return RMSNorm(dim, c["norm_eps"])
    return nn.LayerNorm(dim, eps=c["norm_eps"], bias=c["norm"] == "layernorm")


def rope_tables(positions: Tensor, width: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin (B, 1, T, width) at `positions` (B, T), pairs (i, i + width/2), broadcast over heads."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, width, 2, dtype=torch.float64, device=positions.device) / width))
    freqs = positions.double()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos().float(), emb.sin().float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first cos.shape[-1] dims of x (half-split layout); the rest pass through."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    out = x_rot * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)
    return torch.cat((out, x_pass), dim=-1)


def alibi_slopes(n_head: int) -> Tensor:
    """Press et al. 2022: geometric slopes, interleaved for a head count that is not a power of two."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_two(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_head - closest])


def sinusoidal(positions: Tensor, d: int) -> Tensor:
    """Vaswani et al. 2017 §3.5 table (B, T, d) at `positions` (B, T)."""
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d)).to(positions.device)
    angles = positions.double()[..., None] * div
    table = torch.zeros(*positions.shape, d, dtype=torch.float64, device=positions.device)
    table[..., 0::2] = torch.sin(angles)
    table[..., 1::2] = torch.cos(angles[..., : d // 2])
    return table.float()


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale + bias) v, with bias (B, nh or 1, T, S) carrying the causal/window/padding mask."""
    scores = (q @ k.transpose(-2, -1)) * scale + bias
    return F.softmax(scores.float(), dim=-1).to(q.dtype) @ v


class Attention(nn.Module):
    """mha / sdpa / sliding_window: fused qkv, grouped key/value heads, optional rotary."""

    def __init__(self, c: dict, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.nh, self.nkv, self.hs = c["n_head"], c["n_kv_head"], head_dim(c)
        self.qkv = nn.Linear(c["d_model"], (self.nh + 2 * self.nkv) * self.hs, bias=c.get("qkv_bias", c["bias"]))
        self.proj = nn.Linear(self.nh * self.hs, c["d_model"], bias=c.get("attn_proj_bias", c["bias"]))

    def forward(self, x: Tensor, bias: Tensor, rope: tuple[Tensor, Tensor] | None, cache: Cache | None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.nh * self.hs, self.nkv * self.hs, self.nkv * self.hs], dim=-1)
        q = q.view(B, T, self.nh, self.hs).transpose(1, 2)
        k = k.view(B, T, self.nkv, self.hs).transpose(1, 2)
        v = v.view(B, T, self.nkv, self.hs).transpose(1, 2)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:  # the keys and values of every earlier position, then these
            k, v = cache.update(k, v, self.layer)
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = attend(q, k, v, bias, 1.0 / math.sqrt(self.hs))
        return self.proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hs))


class MLA(nn.Module):
    """DeepSeek-V2 multi-head latent attention, naive form: latent c_kv expanded to per-head keys/values."""

    def __init__(self, c: dict, layer: int) -> None:
        super().__init__()
        self.layer = layer
        m, hs = c["mla"], head_dim(c)
        self.nh, self.q_rank = c["n_head"], m["q_lora_rank"]
        self.kv_rank = m["kv_lora_rank"] or 4 * hs
        self.rope = hs // 2 if m["qk_rope_head_dim"] is None else m["qk_rope_head_dim"]
        self.nope, self.v_dim = m["qk_nope_head_dim"] or hs, m["v_head_dim"] or hs
        qk, d = self.nope + self.rope, c["d_model"]
        if self.q_rank:
            self.wq_a = nn.Linear(d, self.q_rank, bias=False)
            self.q_norm = RMSNorm(self.q_rank, c["norm_eps"])
            self.wq_b = nn.Linear(self.q_rank, self.nh * qk, bias=False)
        else:
            self.wq = nn.Linear(d, self.nh * qk, bias=False)
        self.wkv_a = nn.Linear(d, self.kv_rank + self.rope, bias=False)
        self.kv_norm = RMSNorm(self.kv_rank, c["norm_eps"]) if m["kv_norm"] else nn.Identity()
        self.wkv_b = nn.Linear(self.kv_rank, self.nh * (self.nope + self.v_dim), bias=False)
        self.proj = nn.Linear(self.nh * self.v_dim, d, bias=False)
        self.theta, self.rotary = c["rope"]["theta"], c["pos"] == "rope"

    def forward(self, x: Tensor, bias: Tensor, positions: Tensor, cache: Cache | None) -> Tensor:
        B, T, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_rank else self.wq(x)
        q_nope, q_rope = q.view(B, T, self.nh, self.nope + self.rope).transpose(1, 2).split([self.nope, self.rope], -1)
        c_kv, k_rope = self.wkv_a(x).split([self.kv_rank, self.rope], dim=-1)
        if self.rotary and self.rope:
            cos, sin = rope_tables(positions, self.rope, self.theta)  # the decoupled key/query width
            q_rope, k_rope = rotate(q_rope, cos, sin), rotate(k_rope[:, None], cos, sin)[:, 0]
        kv = self.wkv_b(self.kv_norm(c_kv)).view(B, T, self.nh, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, None].expand(-1, self.nh, -1, -1)], dim=-1)
        if cache is not None:  # the naive form caches the expanded per-head keys and values
            k, v = cache.update(k, v, self.layer)
        y = attend(torch.cat([q_nope, q_rope], dim=-1), k, v, bias, 1.0 / math.sqrt(self.nope + self.rope))
        return self.proj(y.transpose(1, 2).reshape(B, T, self.nh * self.v_dim))


class FeedForward(nn.Module):
    """mlp: proj(act(fc x)); gated_mlp / swiglu / geglu: down(act(gate x) * up x)."""

    def __init__(self, c: dict) -> None:
        super().__init__()
        d, f, b = c["d_model"], c["d_ff"], c.get("ffn_bias", c["bias"])
        self.gated = c["ffn"] != "mlp"
        if self.gated:
            self.gate, self.up, self.down = nn.Linear(d, f, bias=b), nn.Linear(d, f, bias=b), nn.Linear(f, d, bias=b)
        else:
            self.fc, self.proj = nn.Linear(d, f, bias=b), nn.Linear(f, d, bias=b)
        act = c["activation"]
        if c["ffn"] == "swiglu":
            act = "silu"
        elif c["ffn"] == "geglu":
            act = "gelu_tanh" if act == "gelu_tanh" else "gelu"
        self.act = ACTIVATIONS[act]

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-norm x + f(norm x), or post-norm norm(x + f x)."""

    def __init__(self, c: dict, layer: int) -> None:
        super().__init__()
        self.pre = c["norm_position"] == "pre"
        self.norm1, self.norm2 = make_norm(c), make_norm(c)
        self.attn = MLA(c, layer) if c["attn"] == "mla" else Attention(c, layer)
        self.ffn = FeedForward(c)

    def forward(self, x: Tensor, bias: Tensor, rope, cache: Cache | None) -> Tensor:
        if self.pre:
            x = x + self.attn(self.norm1(x), bias, rope, cache)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attn(x, bias, rope, cache))
        return self.norm2(x + self.ffn(x))


def causal_bias(c: dict, keep: Tensor, past: int, T: int) -> Tensor:
    """(B, 1 or nh, T, past + T): causal (and windowed) -inf mask over the slots `keep` (B, past + T)
    marks real, plus ALiBi's linear distance penalty. A padding slot sees itself, so its row stays finite."""
    i = torch.arange(past, past + T, device=keep.device)[:, None]
    j = torch.arange(past + T, device=keep.device)[None, :]
    ok = (j <= i) & keep[:, None, :].bool()
    if c.get("window"):
        ok &= j > i - c["window"]
    ok |= i == j
    mask = torch.zeros(ok.shape, device=keep.device).masked_fill(~ok, float("-inf"))[:, None]
    if c["pos"] == "alibi":  # slots of real tokens are as far apart as their positions
        mask = mask + alibi_slopes(c["n_head"]).to(keep.device)[:, None, None] * (j - i)
    return mask


class Positions(nn.Module):
    """Holds the learned table when there is one (lmlab's `pos.wpe`)."""

    def __init__(self, c: dict) -> None:
        super().__init__()
        if c["pos"] == "learned":
            self.wpe = nn.Embedding(c["max_seq_len"], c["d_model"])


def embed_positions(c: dict, pos: Positions, x: Tensor, position_ids: Tensor) -> tuple[Tensor, object]:
    """Token embeddings `x` plus the added position table, and what the attention rotates by (rope tables,
    or MLA's positions)."""
    if c["pos"] == "learned":
        x = x + pos.wpe(position_ids)
    elif c["pos"] == "sinusoidal":
        x = x + sinusoidal(position_ids, c["d_model"]).to(x.dtype)
    rope = position_ids if c["attn"] == "mla" else None
    if c["pos"] == "rope" and c["attn"] != "mla":
        rope = rope_tables(position_ids, int(head_dim(c) * c["rope"]["fraction"]) // 2 * 2, c["rope"]["theta"])
    return x, rope


class LmlabForCausalLM(PreTrainedModel, GenerationMixin):
    """Embedding, positions, blocks, final norm (pre-norm), LM head: lmlab's CausalLM forward."""

    config_class = LmlabConfig
    base_model_prefix = "lmlab"

    def __init__(self, config: LmlabConfig) -> None:
        super().__init__(config)
        c = self.c = config.lmlab
        self.tok_emb = nn.Embedding(c["vocab_size"], c["d_model"])
        self.pos = Positions(c)
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c["n_layer"]))
        self.norm_f = make_norm(c) if c["norm_position"] == "pre" else nn.Identity()
        if not c["tie_weights"]:
            self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Weights always come from the checkpoint; nothing to initialise."""

    def get_input_embeddings(self) -> nn.Module:
        return self.tok_emb

    def _bias(self, keep: Tensor, past: int, T: int) -> Tensor:
        return causal_bias(self.c, keep, past, T)

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (B, T, V) for the new tokens after the cached ones (`cache` or `past_key_values`); loss against
        `labels` shifted by one, as transformers does. `attention_mask` (B, cached + T) marks left padding with 0."""
        c, (B, T) = self.c, input_ids.shape
        past_key_values = kwargs.get("cache", kwargs.get("past_key_values"))
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if past + T > c["max_seq_len"]:
            raise ValueError(
                f"modeling_lmlab: {past + T} positions exceed max_seq_len {c['max_seq_len']}; generate slides the context"
            )
        keep = torch.ones(B, past + T, dtype=torch.long, device=input_ids.device)
        if attention_mask is not None:
            keep = attention_mask[:, -(past + T) :].long()
        if position_ids is None:  # each row counts from its first real token, as lmlab's left padding does
            position_ids = (keep.cumsum(-1) - 1).clamp_min(0)[:, past:]
        x, rope = embed_positions(c, self.pos, self.tok_emb(input_ids), position_ids)
        bias = self._bias(keep, past, T)
        for block in self.blocks:
            x = block(x, bias, rope, past_key_values)
        x = self.norm_f(x)
        logits = F.linear(x, self.tok_emb.weight) if c["tie_weights"] else self.lm_head(x)
        if c.get("mup_base_width"):  # muP's readout multiplier, 1 / width multiplier
            logits = logits * (1 / (c["d_model"] / c["mup_base_width"]))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE: past_key_values})

    def prepare_inputs_for_generation(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs) -> dict:
        """The tokens the cache has not seen; past max_seq_len, the last max_seq_len tokens without a cache,
        recomputed each step (lmlab's sliding context)."""
        cache = kwargs.get(CACHE)
        limit, past = self.c["max_seq_len"], 0 if cache is None else cache.get_seq_length()
        if input_ids.shape[1] > limit:
            window = input_ids[:, -limit:]
            mask = None if attention_mask is None else attention_mask[:, -limit:]
            return {"input_ids": window, "attention_mask": mask, CACHE: None, "use_cache": False}
        use_cache = kwargs.get("use_cache", True)
        return {
            "input_ids": input_ids[:, past:],
            "attention_mask": attention_mask,
            CACHE: cache,
            "use_cache": use_cache,
        }


class CrossAttention(nn.Module):
    """Decoder queries over the encoder output's keys and values: no positions, padded sources hidden."""

    def __init__(self, c: dict, layer: int) -> None:
        super().__init__()
        self.layer, self.nh, self.nkv, self.hs = layer, c["n_head"], c["n_kv_head"], head_dim(c)
        bias = c.get("qkv_bias", c["bias"])
        self.q = nn.Linear(c["d_model"], self.nh * self.hs, bias=bias)
        self.kv = nn.Linear(c["d_model"], 2 * self.nkv * self.hs, bias=bias)
        self.proj = nn.Linear(self.nh * self.hs, c["d_model"], bias=c.get("attn_proj_bias", c["bias"]))

    def memory_kv(self, memory: Tensor, cache: Cache | None) -> tuple[Tensor, Tensor]:
        """Keys and values of the encoder output, computed on the first decoding step and cached after it."""
        if isinstance(cache, EncoderDecoderCache) and cache.is_updated.get(self.layer):
            layer = cache.cross_attention_cache.layers[self.layer]
            return layer.keys, layer.values
        B, S, _ = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.nkv, self.hs).permute(2, 0, 3, 1, 4)
        if isinstance(cache, EncoderDecoderCache):
            k, v = cache.cross_attention_cache.update(k, v, self.layer)
            cache.is_updated[self.layer] = True
        return k, v

    def forward(self, x: Tensor, memory: Tensor, src_bias: Tensor, cache: Cache | None) -> Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.nh, self.hs).transpose(1, 2)
        k, v = self.memory_kv(memory, cache)
        rep = self.nh // self.nkv
        y = attend(q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), src_bias, self.hs**-0.5)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hs))


class EncoderLayer(Block):
    """lmlab's encoder layer is a Block whose attention sees every unpadded source token."""


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, FFN; pre- or post-norm."""

    def __init__(self, c: dict, layer: int) -> None:
        super().__init__()
        self.pre = c["norm_position"] == "pre"
        self.norm1, self.self_attn = make_norm(c), Attention(c, layer)
        self.norm2, self.cross_attn = make_norm(c), CrossAttention(c, layer)
        self.norm3, self.ffn = make_norm(c), FeedForward(c)

    def forward(self, y: Tensor, bias: Tensor, rope, memory: Tensor, src_bias: Tensor, cache) -> Tensor:
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        if self.pre:
            y = y + self.self_attn(self.norm1(y), bias, rope, self_cache)
            y = y + self.cross_attn(self.norm2(y), memory, src_bias, cache)
            return y + self.ffn(self.norm3(y))
        y = self.norm1(y + self.self_attn(y, bias, rope, self_cache))
        y = self.norm2(y + self.cross_attn(y, memory, src_bias, cache))
        return self.norm3(y + self.ffn(y))


class SourceEncoder:
    """What `generate` calls once per batch (`get_encoder()`): the source through lmlab's encoder.

    A plain object, not a submodule, so the encoder's weights keep lmlab's names on the model itself.
    """

    main_input_name = "input_ids"

    def __init__(self, model: LmlabForSeq2SeqLM) -> None:
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.model.encode(input_ids, attention_mask))

    __call__ = forward


class LmlabForSeq2SeqLM(PreTrainedModel, GenerationMixin):
    """lmlab's Seq2Seq: source embedding, encoder, final norm (pre-norm); target embedding, decoder layers
    (self-attention, cross-attention, FFN), final norm, LM head. Decoding caches self- and cross-attention."""

    config_class = LmlabConfig
    base_model_prefix = "lmlab"
    main_input_name = "input_ids"

    def __init__(self, config: LmlabConfig) -> None:
        config.is_encoder_decoder = True
        super().__init__(config)
        c = self.c = config.lmlab
        pre = c["norm_position"] == "pre"
        self.tgt_emb = nn.Embedding(c["vocab_size"], c["d_model"])
        if not c["share_embeddings"]:  # a shared table is stored once, as tgt_emb
            self.src_emb = nn.Embedding(c["src_vocab_size"], c["d_model"])
        self.enc_pos, self.dec_pos = Positions(c), Positions(c)
        self.encoder = nn.ModuleList(EncoderLayer(c, i) for i in range(c["n_enc_layer"]))
        self.encoder.main_input_name = "input_ids"  # generate reads it from a model's `encoder` attribute
        self.decoder = nn.ModuleList(DecoderLayer(c, i) for i in range(c["n_layer"]))
        self.enc_norm = make_norm(c) if pre else nn.Identity()
        self.dec_norm = make_norm(c) if pre else nn.Identity()
        if not c["tie_weights"]:
            self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)
        self._source_encoder = SourceEncoder(self)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Weights always come from the checkpoint; nothing to initialise."""

    def get_input_embeddings(self) -> nn.Module:
        return self.src_emb if hasattr(self, "src_emb") else self.tgt_emb

    def get_encoder(self) -> SourceEncoder:
        return self._source_encoder

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, S) source ids, 0 in `attention_mask` on padding -> the encoder output (B, S, C)."""
        c, (B, S) = self.c, input_ids.shape
        positions = torch.arange(S, device=input_ids.device).expand(B, S)
        x, rope = embed_positions(c, self.enc_pos, self.get_input_embeddings()(input_ids), positions)
        bias = self._key_bias(attention_mask, B, S, input_ids.device)
        for layer in self.encoder:
            x = layer(x, bias, rope, None)
        return self.enc_norm(x)

    @staticmethod
    def _key_bias(attention_mask: Tensor | None, B: int, S: int, device) -> Tensor:
        """(B, 1, 1, S): -inf on padded keys."""
        keep = torch.ones(B, S, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
        return torch.zeros(B, 1, 1, S, device=device).masked_fill(~keep[:, None, None], float("-inf"))

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """Logits (B, T, V) of the target tokens after the cached ones; with `labels` and no decoder inputs,
        the decoder reads the labels shifted right behind `decoder_start_token_id`, as transformers does."""
        c = self.c
        if encoder_outputs is None:
            encoder_outputs = BaseModelOutput(last_hidden_state=self.encode(input_ids, attention_mask))
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        memory = encoder_outputs.last_hidden_state
        if decoder_input_ids is None:
            start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
            decoder_input_ids = torch.cat([start, labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0)], dim=1)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        (B, T), S = decoder_input_ids.shape, memory.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        if past + T > c["max_seq_len"]:
            raise ValueError(f"modeling_lmlab: {past + T} target positions exceed max_seq_len {c['max_seq_len']}")
        keep = torch.ones(B, past + T, dtype=torch.long, device=memory.device)
        if decoder_attention_mask is not None:
            keep = decoder_attention_mask[:, -(past + T) :].long()
        positions = torch.arange(past, past + T, device=memory.device).expand(B, T)
        y, rope = embed_positions(c, self.dec_pos, self.tgt_emb(decoder_input_ids), positions)
        bias, src_bias = causal_bias(c, keep, past, T), self._key_bias(attention_mask, B, S, memory.device)
        for layer in self.decoder:
            y = layer(y, bias, rope, memory, src_bias, cache)
        y = self.dec_norm(y)
        logits = F.linear(y, self.tgt_emb.weight) if c["tie_weights"] else self.lm_head(y)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return Seq2SeqLMOutput(
            loss=loss, logits=logits, encoder_last_hidden_state=memory, **{CACHE: cache if use_cache else None}
        )

    def prepare_inputs_for_generation(
        self, decoder_input_ids: Tensor, attention_mask: Tensor | None = None, encoder_outputs=None, **kwargs
    ) -> dict:
        """The target tokens the cache has not seen, with the encoder output computed once."""
        cache = kwargs.get(CACHE)
        past = 0 if cache is None else cache.get_seq_length()
        return {
            "decoder_input_ids": decoder_input_ids[:, past:],
            "attention_mask": attention_mask,
            "encoder_outputs": encoder_outputs,
            CACHE: cache,
            "use_cache": kwargs.get("use_cache", True),
        }
