"""Native Sparse Attention (Yuan et al., DeepSeek 2025, arXiv:2502.11089, §3.3), in pure PyTorch.

Every query attends through three branches, each with its own keys and values (§3.3.3):
  cmp: coarse tokens, one per block of `block_size` keys taken every `stride` keys, compressed by
       a learned MLP with intra-block positions (eq. 7); a block is visible once it has ended;
  slc: the tokens of the `n_select` selection blocks of `select_block` keys that score highest
       under the compressed attention probabilities (eqs. 8-11; shared by the heads of a GQA
       group), always including the first block and the query's own block;
  win: the last `window` tokens.
Per-head sigmoid gates mix the three outputs (eq. 5). This reference computes each branch with a
dense masked attention, so it is exact and causal but not yet fast; a kernel can replace it.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F

from lmlab.attn.base import visible
from lmlab.attn.kv_cache import KVCache
from lmlab.config import ModelConfig
from lmlab.pos.base import PosContext
from lmlab.registry import ATTN

BRANCHES = ("cmp", "slc", "win")


class NSACache:
    """Full per-branch key/value caches (compressed keys are rebuilt from the raw keys)."""

    def __init__(self, batch: int, n_kv: int, max_len: int, hs: int, device, dtype) -> None:
        self.caches = {b: KVCache(batch, n_kv, max_len, hs, device, dtype) for b in BRANCHES}

    @property
    def length(self) -> int:
        return self.caches["cmp"].length

    def update(self, kv: dict[str, tuple[Tensor, Tensor]]) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor]:
        """Append each branch's new keys/values; return all of them and the key positions."""
        out = {}
        for name, (k, v) in kv.items():
            k_all, v_all, k_pos = self.caches[name].update(k, v)
            out[name] = (k_all, v_all)
        return out, k_pos


def _masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float) -> Tensor:
    """softmax over allowed keys only; rows with no allowed key give zeros. allowed broadcasts to (B, nh, T, Tk)."""
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.nan_to_num(F.softmax(scores.float(), dim=-1), nan=0.0).to(q.dtype)
    return probs @ v


class NSAOptions(BaseModel):
    """Native Sparse Attention (Yuan et al. 2025) branch sizes."""

    model_config = ConfigDict(extra="forbid")
    block_size: int = Field(16, ge=1, description="tokens per compressed block (l)")
    stride: int = Field(8, ge=1, description="stride between compressed blocks (d)")
    select_block: int = Field(16, ge=1, description="tokens per selection block (l')")
    n_select: int = Field(4, ge=1, description="selected blocks per query (n), incl. the first and local ones")
    window: int = Field(64, ge=1, description="sliding-window branch span (w)")


@ATTN.register(
    "native_sparse",
    tags=("sparse", "hierarchical", "gqa"),
    caps={"kv_cache": True, "short": "NSA", "supports": {"pos": ["rope", "none", "learned", "sinusoidal"]}},
    paper="Yuan et al. 2025 (DeepSeek), arXiv:2502.11089",
    aliases=("nsa",),
    options=NSAOptions,
    options_key="nsa",
)
class NativeSparseAttention(nn.Module):
    """Compressed + selected + sliding-window attention mixed by learned per-head gates."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n = cfg.nsa
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.block, self.stride, self.sel_block, self.n_select, self.win = (
            n.block_size,
            n.stride,
            n.select_block,
            n.n_select,
            n.window,
        )
        hs, kv = self.head_dim, self.n_kv_head
        self.q = nn.Linear(cfg.d_model, self.n_head * hs, bias=cfg.qkv_bias)
        self.kv = nn.Linear(cfg.d_model, len(BRANCHES) * 2 * kv * hs, bias=cfg.qkv_bias)  # independent K/V per branch
        self.block_pos = nn.Parameter(torch.zeros(2, self.block, hs))  # intra-block positions for k and v
        self.compress_k = nn.Linear(self.block * hs, hs, bias=False)  # phi (eq. 7)
        self.compress_v = nn.Linear(self.block * hs, hs, bias=False)
        self.gate = nn.Linear(cfg.d_model, self.n_head * len(BRANCHES), bias=True)
        self.proj = nn.Linear(self.n_head * hs, cfg.d_model, bias=cfg.attn_proj_bias)
        self.proj.residual_projection = True
        self.scale = 1.0 / math.sqrt(hs)

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        """The selection blocks must tile the compression stride, as in the paper (l' divisible by d)."""
        n = cfg.nsa
        if n.select_block % n.stride:
            raise ValueError(f"model.nsa.select_block: {n.select_block} must be a multiple of nsa.stride={n.stride}")
        if n.block_size < n.stride:
            raise ValueError(f"model.nsa.block_size: {n.block_size} must be >= nsa.stride={n.stride}")

    def forward(self, x: Tensor, *, pos: PosContext, cache: NSACache | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        B, T, _ = x.shape
        outs = self.branches(x, pos=pos, cache=cache)  # each (B, nh, T, hs)
        g = torch.sigmoid(self.gate(x)).view(B, T, self.n_head, len(BRANCHES)).permute(0, 2, 1, 3)
        y = sum(g[..., i : i + 1] * outs[name] for i, name in enumerate(BRANCHES))
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def branches(self, x: Tensor, *, pos: PosContext, cache: NSACache | None = None) -> dict[str, Tensor]:
        """The three branch outputs before gating, each (B, nh, T, hs)."""
        B, T, _ = x.shape
        hs, kvh = self.head_dim, self.n_kv_head
        q = self.q(x).view(B, T, self.n_head, hs).transpose(1, 2)
        parts = self.kv(x).view(B, T, len(BRANCHES) * 2, kvh, hs).transpose(1, 3).unbind(2)  # (B, kvh, T, hs) each
        q, *keys = pos.rotate(q, *parts[0::2])
        kv = {name: (keys[i], parts[2 * i + 1]) for i, name in enumerate(BRANCHES)}
        if cache is not None:
            kv, k_pos = cache.update(kv)
        else:
            k_pos = pos.q_pos
        rep = self.n_head // kvh
        expand = lambda t: t.repeat_interleave(rep, dim=1) if rep > 1 else t  # noqa: E731  (B, nh, Tk, hs)
        q_pos = pos.q_pos

        # Compression branch: blocks [i*stride, i*stride + block) of all keys so far.
        k_cmp, v_cmp = self._compress(*kv["cmp"])  # (B, kvh, n_cmp, hs)
        n_cmp = k_cmp.shape[2]
        cmp_end = torch.arange(n_cmp, device=x.device) * self.stride + self.block - 1
        cmp_ok = cmp_end[None, :] <= q_pos[:, None]  # (T, n_cmp)
        scores = (q @ expand(k_cmp).transpose(-2, -1)) * self.scale
        p_cmp = torch.nan_to_num(F.softmax(scores.float().masked_fill(~cmp_ok, float("-inf")), -1), nan=0.0)
        o_cmp = p_cmp.to(q.dtype) @ expand(v_cmp)

        # Selection branch: block importance from p_cmp (eq. 9), summed over each GQA group (eq. 10).
        n_sel = (pos.offset + pos.T - 1) // self.sel_block + 1  # the last key is the last query
        starts = torch.arange(n_cmp, device=x.device) * self.stride
        sel_of = torch.arange(n_sel, device=x.device) * self.sel_block
        overlap = (starts[:, None] < sel_of[None, :] + self.sel_block) & (
            starts[:, None] + self.block > sel_of[None, :]
        )
        importance = p_cmp @ overlap.float()  # (B, nh, T, n_sel)
        importance = importance.view(B, kvh, rep, T, n_sel).sum(2)  # (B, kvh, T, n_sel)
        own = q_pos // self.sel_block
        blk = torch.arange(n_sel, device=x.device)
        forced = (blk[None, :] == 0) | (blk[None, :] == own[:, None])  # the first and the local block
        importance = importance.masked_fill(forced, float("inf"))
        importance = importance.masked_fill(blk[None, :] > own[:, None], float("-inf"))  # future blocks
        top = importance.topk(min(self.n_select, n_sel), dim=-1).indices
        chosen = torch.zeros_like(importance, dtype=torch.bool).scatter_(-1, top, True)
        chosen &= blk[None, :] <= own[:, None]
        key_block = k_pos // self.sel_block  # (Tk,)
        sel_ok = chosen[..., key_block] & visible(q_pos, k_pos)  # (B, kvh, T, Tk)
        k_slc, v_slc = kv["slc"]
        o_slc = _masked_attention(q, expand(k_slc), expand(v_slc), expand(sel_ok), self.scale)

        # Sliding-window branch.
        k_win, v_win = kv["win"]
        o_win = _masked_attention(q, expand(k_win), expand(v_win), visible(q_pos, k_pos, self.win), self.scale)
        return {"cmp": o_cmp, "slc": o_slc, "win": o_win}

    def _compress(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """phi: (B, kvh, Tk, hs) -> (B, kvh, n_cmp, hs), one coarse key/value per block."""
        B, H, Tk, hs = k.shape
        if Tk < self.block:
            return k.new_zeros(B, H, 0, hs), v.new_zeros(B, H, 0, hs)
        k_blocks = k.unfold(2, self.block, self.stride).transpose(-1, -2)  # (B, kvh, n_cmp, block, hs)
        v_blocks = v.unfold(2, self.block, self.stride).transpose(-1, -2)
        k_c = self.compress_k((k_blocks + self.block_pos[0]).flatten(-2))
        v_c = self.compress_v((v_blocks + self.block_pos[1]).flatten(-2))
        return k_c, v_c

    def new_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> NSACache:
        """Raw per-branch caches; coarse keys are recomputed from them."""
        return NSACache(batch, self.n_kv_head, max_len, self.head_dim, device, dtype)

    @classmethod
    def flops_per_token(cls, cfg: ModelConfig, seq_len: int) -> dict[str, int]:
        """Projections, compression MLP, and the keys a sparse kernel reads per query in each branch."""
        n, hs, H, kvh, D = cfg.nsa, cfg.head_dim, cfg.n_head, cfg.n_kv_head, cfg.d_model
        proj = 2 * D * H * hs + 2 * D * 6 * kvh * hs + 2 * D * 3 * H + 2 * H * hs * D
        compress = 2 * 2 * kvh * n.block_size * hs * hs // n.stride  # one block per `stride` tokens
        n_cmp = max(0, (seq_len - n.block_size) // n.stride + 1)
        keys = n_cmp + min(seq_len, n.n_select * n.select_block) + min(seq_len, n.window)
        return {"attn_proj": proj + compress, "attn_scores": 2 * 2 * keys * H * hs}

    @classmethod
    def kv_bytes_per_token(cls, cfg: ModelConfig, bytes_per_value: int = 2) -> int:
        """Three branches of keys and values."""
        return 3 * 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * bytes_per_value
