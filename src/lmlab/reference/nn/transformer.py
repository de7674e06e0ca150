"""Encoder, Decoder and Seq2Seq: pre-norm transformer layers with a final LayerNorm on each stack.

Encoder layer: x + SelfAttn(LN(x)) with padded source keys blocked, then x + FFN(LN(x)).
Decoder layer: x + SelfAttn(LN(x)) causal and padded target keys blocked, x + CrossAttn(LN(x),
memory) with padded source keys blocked, then x + FFN(LN(x)). Token embeddings plus sinusoidal
positions go in; the decoder's last LayerNorm feeds a bias-free projection to target logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lmlab.reference.nn.attention import MultiHeadAttention
from lmlab.reference.nn.layers import GELU, Embedding, LayerNorm, Linear, Module, sinusoidal_positions
from lmlab.reference.utils.mask import decoder_mask, pad_mask
from lmlab.text.words import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Seq2SeqConfig:
    """Sizes of the model (d_ff defaults to 4 d_model)."""

    src_vocab: int
    tgt_vocab: int
    d_model: int = 32
    n_head: int = 1
    n_layer: int = 1
    d_ff: int | None = None
    eps: float = 1e-5
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain dict (for checkpoints)."""
        return asdict(self)


class FeedForward(Module):
    """Linear(d, d_ff) -> GELU -> Linear(d_ff, d)."""

    def __init__(self, d: int, d_ff: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.fc, self.act, self.proj = Linear(d, d_ff, rng), GELU(), Linear(d_ff, d, rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(..., d) -> (..., d)."""
        return self.proj.forward(self.act.forward(self.fc.forward(x)))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Back through the three steps in reverse."""
        return self.fc.backward(self.act.backward(self.proj.backward(dout)))


class EncoderLayer(Module):
    """Bidirectional self-attention and feed-forward, each pre-normed with a residual."""

    def __init__(self, cfg: Seq2SeqConfig, rng: np.random.Generator) -> None:
        super().__init__()
        self.ln1, self.ln2 = LayerNorm(cfg.d_model, cfg.eps), LayerNorm(cfg.d_model, cfg.eps)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_head, rng)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, rng)

    def forward(self, x: np.ndarray, src_blocked: np.ndarray) -> np.ndarray:
        """(B, S, d) -> (B, S, d)."""
        h = self.ln1.forward(x)
        x = x + self.attn.forward(h, h, src_blocked)
        return x + self.ffn.forward(self.ln2.forward(x))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """The residual passes dout straight through; each branch adds its own gradient."""
        dx = dout + self.ln2.backward(self.ffn.backward(dout))
        dq, dkv = self.attn.backward(dx)
        return dx + self.ln1.backward(dq + dkv)


class DecoderLayer(Module):
    """Causal self-attention, cross-attention over the encoder output, feed-forward."""

    def __init__(self, cfg: Seq2SeqConfig, rng: np.random.Generator) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (LayerNorm(cfg.d_model, cfg.eps) for _ in range(3))
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_head, rng)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_head, rng)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, rng)

    def forward(
        self, y: np.ndarray, memory: np.ndarray, tgt_blocked: np.ndarray, src_blocked: np.ndarray
    ) -> np.ndarray:
        """(B, T, d) target states, (B, S, d) encoder output -> (B, T, d)."""
        h = self.ln1.forward(y)
        y = y + self.self_attn.forward(h, h, tgt_blocked)
        y = y + self.cross_attn.forward(self.ln2.forward(y), memory, src_blocked)
        return y + self.ffn.forward(self.ln3.forward(y))

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (d target states, d memory)."""
        dy = dout + self.ln3.backward(self.ffn.backward(dout))
        dq, dmem = self.cross_attn.backward(dy)
        dy = dy + self.ln2.backward(dq)
        dq, dkv = self.self_attn.backward(dy)
        return dy + self.ln1.backward(dq + dkv), dmem


class Encoder(Module):
    """Source embedding + positions -> encoder layers -> LayerNorm."""

    def __init__(self, cfg: Seq2SeqConfig, rng: np.random.Generator) -> None:
        super().__init__()
        self.d = cfg.d_model
        self.emb = Embedding(cfg.src_vocab, cfg.d_model, rng)
        self.layers = [EncoderLayer(cfg, rng) for _ in range(cfg.n_layer)]
        self.ln_f = LayerNorm(cfg.d_model, cfg.eps)

    def forward(self, X: np.ndarray, src_blocked: np.ndarray) -> np.ndarray:
        """(B, S) ids -> (B, S, d) memory."""
        x = self.emb.forward(X)
        x = x + sinusoidal_positions(X.shape[1], self.d, x.dtype)
        for layer in self.layers:
            x = layer.forward(x, src_blocked)
        return self.ln_f.forward(x)

    def backward(self, dmem: np.ndarray) -> None:
        """Gradients into every encoder parameter (positions are fixed: nothing to learn there)."""
        dx = self.ln_f.backward(dmem)
        for layer in reversed(self.layers):
            dx = layer.backward(dx)
        self.emb.backward(dx)


class Decoder(Module):
    """Target embedding + positions -> decoder layers -> LayerNorm -> logits."""

    def __init__(self, cfg: Seq2SeqConfig, rng: np.random.Generator) -> None:
        super().__init__()
        self.d = cfg.d_model
        self.emb = Embedding(cfg.tgt_vocab, cfg.d_model, rng)
        self.layers = [DecoderLayer(cfg, rng) for _ in range(cfg.n_layer)]
        self.ln_f = LayerNorm(cfg.d_model, cfg.eps)
        self.out = Linear(cfg.d_model, cfg.tgt_vocab, rng, bias=False)

    def forward(
        self, Y_in: np.ndarray, memory: np.ndarray, tgt_blocked: np.ndarray, src_blocked: np.ndarray
    ) -> np.ndarray:
        """(B, T) ids -> (B, T, V) logits."""
        y = self.emb.forward(Y_in)
        y = y + sinusoidal_positions(Y_in.shape[1], self.d, y.dtype)
        for layer in self.layers:
            y = layer.forward(y, memory, tgt_blocked, src_blocked)
        return self.out.forward(self.ln_f.forward(y))

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """Gradients into every decoder parameter; returns d memory (summed over layers)."""
        dy = self.ln_f.backward(self.out.backward(dlogits))
        dmem = 0.0
        for layer in reversed(self.layers):
            dy, dm = layer.backward(dy)
            dmem = dmem + dm
        self.emb.backward(dy)
        return dmem


class Seq2Seq(Module):
    """The encoder-decoder: `forward` to logits, `backward` from dlogits, `greedy_decode` for output ids."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        if cfg.d_ff is None:
            cfg.d_ff = 4 * cfg.d_model
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.encoder = Encoder(cfg, rng)
        self.decoder = Decoder(cfg, rng)

    def forward(self, X_ids: np.ndarray, M_src: np.ndarray, Y_in: np.ndarray, M_tgt: np.ndarray) -> np.ndarray:
        """Teacher-forced logits (B, T, V_tgt) for targets Y_in given sources X_ids."""
        src_blocked = pad_mask(M_src)
        memory = self.encoder.forward(X_ids, src_blocked)
        # Y_in's pad positions line up with M_tgt's (Y_in = <bos> + target, Y_out = target + <eos>).
        return self.decoder.forward(Y_in, memory, decoder_mask(M_tgt), src_blocked)

    def backward(self, dlogits: np.ndarray) -> None:
        """Accumulate every parameter's gradient for the last forward."""
        self.encoder.backward(self.decoder.backward(dlogits))

    def greedy_decode(self, X_ids: np.ndarray, M_src: np.ndarray, max_len: int = 50) -> list[list[int]]:
        """Most likely next token at each step, from <bos> until <eos> (included) or max_len tokens."""
        src_blocked = pad_mask(M_src)
        memory = self.encoder.forward(X_ids, src_blocked)
        B = X_ids.shape[0]
        Y = np.full((B, 1), BOS_ID, dtype=np.int32)
        done = np.zeros(B, dtype=bool)
        for _ in range(max_len):
            valid = np.ones_like(Y, dtype=bool)
            logits = self.decoder.forward(Y, memory, decoder_mask(valid), src_blocked)
            last = logits[:, -1].copy()
            last[:, [PAD_ID, BOS_ID]] = -np.inf  # input markers, never outputs
            nxt = np.where(done, PAD_ID, last.argmax(-1)).astype(np.int32)
            Y = np.concatenate([Y, nxt[:, None]], axis=1)
            done |= nxt == EOS_ID
            if done.all():
                break
        out = []
        for row in Y[:, 1:].tolist():
            out.append(row[: row.index(EOS_ID) + 1] if EOS_ID in row else [t for t in row if t != PAD_ID])
        return out
