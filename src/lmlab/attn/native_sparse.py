"""Native Sparse Attention (Yuan et al., DeepSeek 2025, arXiv:2502.11089, §3.3), in pure PyTorch.

Every query attends through three branches, each with its own keys and values (§3.3.3):
  cmp: coarse tokens, one per block of `block_size` keys taken every `stride` keys, compressed by
       a learned MLP with intra-block positions (eq. 7); a block is visible once it has ended;
  slc: the tokens of the `n_select` selection blocks of `select_block` keys that score highest
       under the compressed attention probabilities (eqs. 8-11; shared by the heads of a GQA
       group), always including the first block and the query's own block;
  win: the last `window` tokens.
Per-head sigmoid gates mix the three outputs (eq. 5). Over a whole sequence the selection branch
gathers only the chosen blocks (O(n l') per token) and the window branch runs blockwise (O(w)), so
the cost per token is O(T/d + n l' + w) as in the paper; decoding with a cache, and the registered
`native_sparse_reference`, compute each branch as a dense masked attention instead.

`nsa.selection: block` lets the queries of each selection block share the choice of its first
query (causal: that query precedes the others), so one fused attention call per query block reads
its n blocks once for all of its queries; the paper's per-query choice (`query`) gathers per query
where neighbours disagree.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from lmlab.attn.base import additive, visible
from lmlab.attn.kv_cache import KVCache
from lmlab.attn.local import blocked_window_attention
from lmlab.config import ModelConfig
from lmlab.errors import ConfigError
from lmlab.pos.base import PosContext
from lmlab.registry import ATTN

BRANCHES = ("cmp", "slc", "win")


class NSACache:
    """Full per-branch key/value caches (compressed keys are rebuilt from the raw keys)."""

    def __init__(self, batch: int, n_kv: int, max_len: int, hs: int, device, dtype) -> None:
        self.caches = {b: KVCache(batch, n_kv, max_len, hs, device, dtype) for b in BRANCHES}
        self.block_tops: dict[int, tuple[Tensor, Tensor]] = {}  # selection="block": each block's choice

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on, in every branch."""
        for cache in self.caches.values():
            cache.truncate(length)

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


def _expand(t: Tensor, q: Tensor) -> Tensor:
    """Repeat key/value (or mask) heads (B, kvh, ...) to the query heads of `q` (B, nh, ...)."""
    rep = q.shape[1] // t.shape[1]
    return t.repeat_interleave(rep, dim=1) if rep > 1 else t


class NSAOptions(BaseModel):
    """Native Sparse Attention (Yuan et al. 2025) branch sizes."""

    model_config = ConfigDict(extra="forbid")
    block_size: int = Field(16, ge=1, description="tokens per compressed block (l)")
    stride: int = Field(8, ge=1, description="stride between compressed blocks (d)")
    select_block: int = Field(16, ge=1, description="tokens per selection block (l')")
    n_select: int = Field(4, ge=1, description="selected blocks per query (n), incl. the first and local ones")
    window: int = Field(64, ge=1, description="sliding-window branch span (w)")
    selection: Literal["query", "block"] = Field(
        "query",
        description="query: each query picks its own blocks (the paper); block: the queries of each selection "
        "block share the choice of its first query, so a block's keys are read once for all of them",
    )


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
    """Compressed + selected + sliding-window attention mixed by learned per-head gates.

    A whole sequence reads only what each branch keeps: the block summaries, the n chosen blocks, the
    window. `native_sparse_reference` computes the same branches as dense masked attentions.
    """

    sparse = True

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
        self.per_block = n.selection == "block"
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
        if pos.starts is not None:
            raise ConfigError("data.doc_mask: native_sparse attention has no document masking; use sdpa, mha, mla")
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
        q_pos = pos.q_pos
        o_cmp, p_cmp = self._compressed(q, *kv["cmp"], q_pos, leaders=self.per_block)
        n_sel = (pos.offset + pos.T - 1) // self.sel_block + 1  # the last key is the last query
        top, valid = self._choose(p_cmp, q_pos, n_sel, cache)
        if cache is None and self.sparse:  # a whole sequence: only the chosen blocks and the window are read
            o_slc = self._selection_sparse(q, *kv["slc"], top, valid, q_pos)
            o_win = self._window_sparse(q, *kv["win"])
        else:
            o_slc = self._selection_dense(q, *kv["slc"], top, valid, q_pos, k_pos)
            k_win, v_win = kv["win"]
            o_win = _masked_attention(
                q, _expand(k_win, q), _expand(v_win, q), visible(q_pos, k_pos, self.win), self.scale
            )
        return {"cmp": o_cmp, "slc": o_slc, "win": o_win}

    def _compressed(self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, leaders: bool) -> tuple[Tensor, Tensor]:
        """Attention over the block summaries (eq. 7): blocks [i*stride, i*stride + block) of the keys, each
        visible once it has ended; returns the output and the probabilities (B, nh, T or T/l', n_cmp) that
        choose the selection blocks (only the leading query of each selection block's row when `leaders`)."""
        k_cmp, v_cmp = self._compress(k, v)  # (B, kvh, n_cmp, hs)
        cmp_end = torch.arange(k_cmp.shape[2], device=q.device) * self.stride + self.block - 1
        cmp_ok = cmp_end[None, :] <= q_pos[:, None]  # (T, n_cmp)
        if not self.sparse or k_cmp.shape[2] == 0:  # the reference: one dense masked softmax
            scores = (q @ _expand(k_cmp, q).transpose(-2, -1)) * self.scale
            p_cmp = torch.nan_to_num(F.softmax(scores.float().masked_fill(~cmp_ok, float("-inf")), -1), nan=0.0)
            out = p_cmp.to(q.dtype) @ _expand(v_cmp, q)
            return out, p_cmp[:, :, q_pos % self.sel_block == 0] if leaders else p_cmp
        # A fused kernel for the output; queries before the first block's end see nothing and stay zero.
        seen = int((q_pos < self.block - 1).sum())
        out = q.new_zeros(q.shape)
        # The few summaries are repeated per head: the kernel's backward is faster so than with enable_gqa.
        k_rep, v_rep = _expand(k_cmp, q), _expand(v_cmp, q)
        mask = additive(cmp_ok[seen:], q.dtype)
        out[:, :, seen:] = F.scaled_dot_product_attention(
            q[:, :, seen:], k_rep, v_rep, attn_mask=mask, scale=self.scale
        )
        with torch.no_grad():  # the choice of blocks carries no gradient (topk)
            rows = torch.nonzero(q_pos % self.sel_block == 0).flatten() if leaders else slice(None)
            scores = (q[:, :, rows] @ _expand(k_cmp, q).transpose(-2, -1)) * self.scale
            p_cmp = torch.nan_to_num(F.softmax(scores.float().masked_fill(~cmp_ok[rows], float("-inf")), -1), nan=0.0)
        return out, p_cmp

    def _choose(self, p_cmp: Tensor, q_pos: Tensor, n_sel: int, cache: NSACache | None) -> tuple[Tensor, Tensor]:
        """Each query's chosen blocks: its own (selection="query"), or those of the first query of its selection
        block (selection="block"; causal, since that query precedes the rest, and carried across decode steps
        in the cache)."""
        if not self.per_block:
            return self._selected_blocks(p_cmp, q_pos, n_sel)
        L, first = self.sel_block, int(q_pos[0])
        leaders = torch.nonzero(q_pos % L == 0).flatten()  # the queries that choose for their block
        top, valid = self._selected_blocks(p_cmp, q_pos[leaders], n_sel)  # p_cmp holds the leaders' rows
        if first % L:  # the first queries belong to a block chosen before this call
            if cache is None or first // L not in cache.block_tops:
                raise RuntimeError("native_sparse selection='block' needs the choice of each block's first query")
            held_top, held_valid = cache.block_tops[first // L]
            need = top.shape[-1] - held_top.shape[-1]  # more blocks exist now: pad with future (invalid) ones
            if need > 0:
                future = held_top.new_tensor(range(need)) + first // L + 1
                held_top = torch.cat([held_top, future.expand(*held_top.shape[:-1], need)], -1)
                held_valid = F.pad(held_valid, (0, need))
            top = torch.cat([held_top[:, :, None], top], 2)
            valid = torch.cat([held_valid[:, :, None], valid], 2)
        # The block each query follows, counted from the first one present here.
        follow = q_pos // L - first // L
        if cache is not None:  # kept per block, so a cache cut back into an earlier block still has its choice
            for i in range(top.shape[2]):
                cache.block_tops[first // L + i] = (top[:, :, i], valid[:, :, i])
        top, valid = top[:, :, follow], valid[:, :, follow]
        return top, valid

    def _selected_blocks(self, p_cmp: Tensor, q_pos: Tensor, n_sel: int) -> tuple[Tensor, Tensor]:
        """The top-n selection blocks of each query (eqs. 9-11) and which of them are real (not future).

        A selection block's importance is the compressed probability of every compressed block that
        overlaps it (eq. 9), summed over the heads of a GQA group (eq. 10); the first block and the
        query's own block are always chosen. Returns (B, kvh, T, n) block indices and a validity mask.
        """
        B, H, T, n_cmp = p_cmp.shape
        kvh = self.n_kv_head
        group = p_cmp.view(B, kvh, H // kvh, T, n_cmp).sum(2)  # (B, kvh, T, n_cmp)
        starts = torch.arange(n_cmp, device=p_cmp.device) * self.stride
        first, last = starts // self.sel_block, (starts + self.block - 1) // self.sel_block
        importance = group.new_zeros(B, kvh, T, n_sel)
        for offset in range(int((last - first).max()) + 1 if n_cmp else 0):  # each overlapped block in turn
            index = first + offset
            ok = (index <= last) & (index < n_sel)
            importance.scatter_add_(-1, index.clamp(max=n_sel - 1).expand(B, kvh, T, n_cmp), group * ok)
        own = q_pos // self.sel_block
        blk = torch.arange(n_sel, device=p_cmp.device)
        forced = (blk[None, :] == 0) | (blk[None, :] == own[:, None])
        importance = importance.masked_fill(forced, float("inf"))
        importance = importance.masked_fill(blk[None, :] > own[:, None], float("-inf"))  # future blocks
        top = importance.topk(min(self.n_select, n_sel), dim=-1).indices
        return top, top <= own[:, None]

    def _selection_dense(
        self, q: Tensor, k: Tensor, v: Tensor, top: Tensor, valid: Tensor, q_pos: Tensor, k_pos: Tensor
    ) -> Tensor:
        """The selection branch as one masked attention over all keys (the reference; decoding)."""
        chosen = torch.zeros(*top.shape[:-1], int(top.max()) + 1, dtype=torch.bool, device=q.device)
        chosen.scatter_(-1, top, valid)
        key_block = (k_pos // self.sel_block).clamp(max=chosen.shape[-1] - 1)
        in_chosen = chosen[..., key_block] & (k_pos // self.sel_block < chosen.shape[-1])
        allowed = in_chosen & visible(q_pos, k_pos)  # (B, kvh, T, Tk)
        return _masked_attention(q, _expand(k, q), _expand(v, q), _expand(allowed, q), self.scale)

    def _selection_sparse(self, q: Tensor, k: Tensor, v: Tensor, top: Tensor, valid: Tensor, q_pos: Tensor) -> Tensor:
        """Each query reads only its n chosen blocks of `select_block` keys, O(n l') per token: through the
        union of a query block's choices when neighbours agree (a trained model's usual case), else query
        by query."""
        out = self._selection_union(q, k, v, top, valid, q_pos)
        return self._selection_per_query(q, k, v, top, valid, q_pos) if out is None else out

    def _selection_union(
        self, q: Tensor, k: Tensor, v: Tensor, top: Tensor, valid: Tensor, q_pos: Tensor
    ) -> Tensor | None:
        """Queries in blocks of `select_block`: a query block gathers the union of the blocks its queries
        chose once, and one masked attention gives each query exactly its own n blocks, so keys are read
        once per query block rather than once per query. None when the unions are too wide to pay."""
        B, H, T, hs = q.shape
        kvh, L = self.n_kv_head, self.sel_block
        n_blocks = -(-k.shape[2] // L)
        kb = F.pad(k, (0, 0, 0, n_blocks * L - k.shape[2])).reshape(B * kvh * n_blocks, L * hs)
        vb = F.pad(v, (0, 0, 0, n_blocks * L - v.shape[2])).reshape(B * kvh * n_blocks, L * hs)
        nqb = -(-T // L)
        pad = nqb * L - T
        chosen = torch.zeros(B, kvh, T, n_blocks, dtype=torch.bool, device=q.device).scatter_(-1, top, valid)
        chosen = F.pad(chosen, (0, 0, 0, pad)).view(B, kvh, nqb, L, n_blocks)
        used = chosen.any(3)  # (B, kvh, nqb, n_blocks): the blocks any query of the query block chose
        U = int(used.sum(-1).max())
        if 2 * top.shape[-1] < U:  # neighbours disagree (an untrained model): per-query gathers read less
            return None
        union = used.to(torch.int8).topk(U, dim=-1, sorted=False).indices  # (B, kvh, nqb, U)
        picked = chosen.gather(-1, union[:, :, :, None, :].expand(-1, -1, -1, L, -1))  # (B, kvh, nqb, L, U)
        rows = (torch.arange(B * kvh, device=q.device).view(B, kvh, 1, 1) * n_blocks + union).flatten()
        keys = kb.index_select(0, rows).view(B, kvh, nqb, 1, U * L, hs)
        values = vb.index_select(0, rows).view(B, kvh, nqb, 1, U * L, hs)
        key_pos = (union[..., None] * L + torch.arange(L, device=q.device)).flatten(-2)  # (B, kvh, nqb, U*L)
        slots = torch.arange(nqb * L, device=q.device).view(nqb, L)
        allowed = picked.repeat_interleave(L, dim=-1) & (key_pos[:, :, :, None, :] <= slots[:, :, None])
        allowed[:, :, -1, L - pad :, 0] = True  # padded queries see one key: no empty row, no NaN gradient
        # One 4-D call (the fused kernels take nothing else): query blocks fold into the batch.
        rep, n = H // kvh, B * kvh * nqb
        qb = F.pad(q, (0, 0, 0, pad)).view(B, kvh, rep, nqb, L, hs).transpose(2, 3).reshape(n, rep, L, hs)
        mask = additive(allowed, q.dtype).view(n, 1, L, U * L)
        kv = keys.view(n, 1, U * L, hs), values.view(n, 1, U * L, hs)
        y = F.scaled_dot_product_attention(qb, *kv, attn_mask=mask, scale=self.scale, enable_gqa=rep > 1)
        return y.view(B, kvh, nqb, rep, L, hs).transpose(2, 3).reshape(B, H, nqb * L, hs)[:, :, :T]

    def _selection_per_query(
        self, q: Tensor, k: Tensor, v: Tensor, top: Tensor, valid: Tensor, q_pos: Tensor
    ) -> Tensor:
        """Each query gathers its own n chosen blocks (chunks of queries, each recomputed in the backward, so
        the gathered keys are never all alive at once): for selections that neighbours do not share."""
        B, H, T, hs = q.shape
        kvh, L = self.n_kv_head, self.sel_block
        pad = (-k.shape[2]) % L
        kb = F.pad(k, (0, 0, 0, pad)).reshape(B, kvh, -1, L * hs)
        vb = F.pad(v, (0, 0, 0, pad)).reshape(B, kvh, -1, L * hs)
        qg = q.view(B, kvh, H // kvh, T, hs)
        n = top.shape[-1]
        chunk = max(1, (1 << 17) // (n * L))
        outs = []
        for t0 in range(0, T, chunk):
            args = (qg[:, :, :, t0 : t0 + chunk], kb, vb, top[:, :, t0 : t0 + chunk], valid[:, :, t0 : t0 + chunk])
            args += (q_pos[t0 : t0 + chunk],)
            if torch.is_grad_enabled() and q.requires_grad:
                outs.append(checkpoint(self._selection_chunk, *args, use_reentrant=False))
            else:
                outs.append(self._selection_chunk(*args))
        return torch.cat(outs, dim=3).view(B, H, T, hs)

    def _selection_chunk(self, q: Tensor, kb: Tensor, vb: Tensor, top: Tensor, valid: Tensor, q_pos: Tensor) -> Tensor:
        """(B, kvh, rep, Tc, hs) queries on the gathered blocks of their group: (B, kvh, rep, Tc, hs)."""
        B, kvh, _, Tc, hs = q.shape
        n, L, n_blocks = top.shape[-1], self.sel_block, kb.shape[2]
        # Whole blocks are copied as rows (index_select), far cheaper than an elementwise gather.
        base = torch.arange(B * kvh, device=q.device).view(B, kvh, 1, 1) * n_blocks
        rows = (base + top).flatten()
        keys = kb.reshape(B * kvh * n_blocks, -1).index_select(0, rows).view(B, kvh, Tc, n * L, hs)
        values = vb.reshape(B * kvh * n_blocks, -1).index_select(0, rows).view(B, kvh, Tc, n * L, hs)
        key_pos = (top[..., None] * L + torch.arange(L, device=q.device)).flatten(-2)  # (B, kvh, Tc, n*L)
        allowed = (key_pos <= q_pos[:, None]) & valid.repeat_interleave(L, dim=-1)
        scores = torch.einsum("bgrtd,bgtsd->bgrts", q, keys) * self.scale
        scores = scores.float().masked_fill(~allowed[:, :, None], float("-inf"))
        probs = torch.nan_to_num(F.softmax(scores, dim=-1), nan=0.0).to(q.dtype)
        return torch.einsum("bgrts,bgtsd->bgrtd", probs, values)

    def _window_sparse(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The window branch in O(T * w) (blocked), or one causal kernel call when the window spans it all."""
        if self.win < q.shape[2]:
            return blocked_window_attention(q, k, v, self.win)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])

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


@ATTN.register(
    "native_sparse_reference",
    tags=("sparse", "hierarchical", "gqa", "reference"),
    caps={"kv_cache": True, "short": "NSAref", "supports": {"pos": ["rope", "none", "learned", "sinusoidal"]}},
    paper="Yuan et al. 2025 (DeepSeek), arXiv:2502.11089",
    options=NSAOptions,
    options_key="nsa",
)
class NativeSparseReference(NativeSparseAttention):
    """The same attention with every branch a dense masked softmax over all keys: O(T) per token, the
    check that the sparse gathers and the blocked window compute exactly the paper's branches."""

    sparse = False
