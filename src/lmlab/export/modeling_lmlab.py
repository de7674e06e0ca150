"""An lmlab composition as a transformers model, for `trust_remote_code=True`; needs only torch and transformers.

`lmlab export --format hf` copies this file beside `config.json` and `model.safetensors` when a
run's blocks have no transformers family (MLA, ALiBi, sliding windows, gated FFNs on GPT-2...).
The config's `lmlab` entry is the run's model config; parameter names are lmlab's own, so the
weights load unchanged. It is a second, deliberately plain implementation of the blocks it
supports (attention mha / sdpa / sliding_window / mla; positions learned / sinusoidal / rope /
alibi / none; norms layernorm / layernorm_nobias / rmsnorm; FFNs mlp / gated_mlp / swiglu /
geglu): the export only succeeds when its logits match lmlab's. It recomputes the whole
context at each generation step (no KV cache).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

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


def rope_tables(length: int, width: int, theta: float, device) -> tuple[Tensor, Tensor]:
    """cos/sin (length, width) for positions 0..length-1, pairs (i, i + width/2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, width, 2, dtype=torch.float64, device=device) / width))
    freqs = torch.outer(torch.arange(length, dtype=torch.float64, device=device), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
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


def sinusoidal(T: int, d: int, device) -> Tensor:
    """Vaswani et al. 2017 §3.5 table (T, d)."""
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d)).to(device)
    angles = torch.arange(T, dtype=torch.float64, device=device)[:, None] * div[None, :]
    table = torch.zeros(T, d, dtype=torch.float64, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d // 2])
    return table.float()


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale + bias) v, with bias (nh or 1, T, T) carrying the causal/window mask."""
    scores = (q @ k.transpose(-2, -1)) * scale + bias
    return F.softmax(scores.float(), dim=-1).to(q.dtype) @ v


class Attention(nn.Module):
    """mha / sdpa / sliding_window: fused qkv, grouped key/value heads, optional rotary."""

    def __init__(self, c: dict) -> None:
        super().__init__()
        self.nh, self.nkv, self.hs = c["n_head"], c["n_kv_head"], head_dim(c)
        self.qkv = nn.Linear(c["d_model"], (self.nh + 2 * self.nkv) * self.hs, bias=c.get("qkv_bias", c["bias"]))
        self.proj = nn.Linear(self.nh * self.hs, c["d_model"], bias=c.get("attn_proj_bias", c["bias"]))

    def forward(self, x: Tensor, bias: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.nh * self.hs, self.nkv * self.hs, self.nkv * self.hs], dim=-1)
        q = q.view(B, T, self.nh, self.hs).transpose(1, 2)
        k = k.view(B, T, self.nkv, self.hs).transpose(1, 2)
        v = v.view(B, T, self.nkv, self.hs).transpose(1, 2)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = attend(q, k, v, bias, 1.0 / math.sqrt(self.hs))
        return self.proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hs))


class MLA(nn.Module):
    """DeepSeek-V2 multi-head latent attention, naive form: latent c_kv expanded to per-head keys/values."""

    def __init__(self, c: dict) -> None:
        super().__init__()
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

    def forward(self, x: Tensor, bias: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        B, T, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_rank else self.wq(x)
        q_nope, q_rope = q.view(B, T, self.nh, self.nope + self.rope).transpose(1, 2).split([self.nope, self.rope], -1)
        c_kv, k_rope = self.wkv_a(x).split([self.kv_rank, self.rope], dim=-1)
        if self.rotary and self.rope:
            cos, sin = rope_tables(T, self.rope, self.theta, x.device)  # the decoupled key/query width
            q_rope, k_rope = rotate(q_rope, cos, sin), rotate(k_rope, cos, sin)
        kv = self.wkv_b(self.kv_norm(c_kv)).view(B, T, self.nh, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, None].expand(-1, self.nh, -1, -1)], dim=-1)
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

    def __init__(self, c: dict) -> None:
        super().__init__()
        self.pre = c["norm_position"] == "pre"
        self.norm1, self.norm2 = make_norm(c), make_norm(c)
        self.attn = MLA(c) if c["attn"] == "mla" else Attention(c)
        self.ffn = FeedForward(c)

    def forward(self, x: Tensor, bias: Tensor, rope) -> Tensor:
        if self.pre:
            x = x + self.attn(self.norm1(x), bias, rope)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.attn(x, bias, rope))
        return self.norm2(x + self.ffn(x))


class Positions(nn.Module):
    """Holds the learned table when there is one (lmlab's `pos.wpe`)."""

    def __init__(self, c: dict) -> None:
        super().__init__()
        if c["pos"] == "learned":
            self.wpe = nn.Embedding(c["max_seq_len"], c["d_model"])


class LmlabForCausalLM(PreTrainedModel, GenerationMixin):
    """Embedding, positions, blocks, final norm (pre-norm), LM head: lmlab's CausalLM forward."""

    config_class = LmlabConfig
    base_model_prefix = "lmlab"

    def __init__(self, config: LmlabConfig) -> None:
        super().__init__(config)
        c = self.c = config.lmlab
        self.tok_emb = nn.Embedding(c["vocab_size"], c["d_model"])
        self.pos = Positions(c)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["n_layer"]))
        self.norm_f = make_norm(c) if c["norm_position"] == "pre" else nn.Identity()
        if not c["tie_weights"]:
            self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Weights always come from the checkpoint; nothing to initialise."""

    def get_input_embeddings(self) -> nn.Module:
        return self.tok_emb

    def _bias(self, T: int, device) -> Tensor:
        """Causal (and windowed) -inf mask, plus ALiBi's linear distance penalty."""
        i = torch.arange(T, device=device)[:, None]
        j = torch.arange(T, device=device)[None, :]
        ok = j <= i
        if self.c.get("window"):
            ok &= j > i - self.c["window"]
        mask = torch.zeros(T, T, device=device).masked_fill(~ok, float("-inf"))[None]
        if self.c["pos"] == "alibi":
            mask = mask + alibi_slopes(self.c["n_head"]).to(device)[:, None, None] * (j - i)
        return mask

    def forward(
        self, input_ids: Tensor, labels: Tensor | None = None, attention_mask: Tensor | None = None, **kwargs
    ) -> CausalLMOutput:
        """Logits (B, T, V) for the whole context; loss against `labels` shifted by one, as transformers does."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("modeling_lmlab: padded batches are not supported; generate one prompt at a time")
        c, T = self.c, input_ids.shape[1]
        x = self.tok_emb(input_ids)
        if c["pos"] == "learned":
            x = x + self.pos.wpe(torch.arange(T, device=x.device))
        elif c["pos"] == "sinusoidal":
            x = x + sinusoidal(T, c["d_model"], x.device).to(x.dtype)
        rope = None
        if c["pos"] == "rope" and c["attn"] != "mla":
            hs = head_dim(c)
            rope = rope_tables(T, int(hs * c["rope"]["fraction"]) // 2 * 2, c["rope"]["theta"], x.device)
        bias = self._bias(T, x.device)
        for block in self.blocks:
            x = block(x, bias, rope)
        x = self.norm_f(x)
        logits = F.linear(x, self.tok_emb.weight) if c["tie_weights"] else self.lm_head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs) -> dict:
        """No cache: every step sees the last max_seq_len tokens."""
        window = input_ids[:, -self.c["max_seq_len"] :]
        mask = kwargs.get("attention_mask")
        return {"input_ids": window, "attention_mask": None if mask is None else mask[:, -window.shape[1] :]}
