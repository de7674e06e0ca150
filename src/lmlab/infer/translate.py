"""Decoding for encoder-decoder models: batched greedy (beam search in beam.py), translate and eval.

The encoder runs once; every decoder layer's cross-attention keys/values are computed once
from its output, and decoder self-attention keeps a KV cache, so each step costs one token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmlab.reference.data.tokenization import BOS_ID, EOS_ID, PAD_ID


def start_decoding(model, src_ids: Tensor, src_valid: Tensor | None, max_len: int, copies: int = 1):
    """Encode once; cross-attention K/V and the source mask repeated `copies` times per row (beams)."""
    if src_valid is None:
        src_valid = src_ids != PAD_ID
    memory, src_mask = model.encode(src_ids, src_valid)
    kv = model.cross_kv(memory)
    if copies > 1:
        kv = [(k.expand(copies, -1, -1, -1), v.expand(copies, -1, -1, -1)) for k, v in kv]
        src_mask = src_mask.expand(copies, -1, -1, -1)
    return kv, src_mask, model.new_cache(src_ids.shape[0] * copies, max_len + 1)


@torch.no_grad()
def greedy_decode(
    model, src_ids: Tensor, src_valid: Tensor | None = None, *, max_len: int = 64, use_cache: bool = True
) -> list[list[int]]:
    """The most likely token at each step, from <bos> until <eos> (kept) or max_len tokens, per source row."""
    model.eval()
    kv, src_mask, cache = start_decoding(model, src_ids, src_valid, max_len)
    B = src_ids.shape[0]
    ys = torch.full((B, 1), BOS_ID, dtype=torch.long, device=src_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
    for _ in range(max_len):
        if use_cache:
            logits = model.decode(ys[:, -1:], kv, src_mask, cache=cache)
        else:
            logits = model.decode(ys, kv, src_mask, last_only=True)
        nxt = suppress_markers(logits[:, -1]).argmax(-1).masked_fill(done, PAD_ID)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == EOS_ID
        if bool(done.all()):
            break
    return [_trim(row) for row in ys[:, 1:].tolist()]


def suppress_markers(logits: Tensor) -> Tensor:
    """Never emit <pad> or <bos>: they are input markers, not outputs."""
    logits = logits.clone()
    logits[:, [PAD_ID, BOS_ID]] = float("-inf")
    return logits


def _trim(row: list[int]) -> list[int]:
    return row[: row.index(EOS_ID) + 1] if EOS_ID in row else [t for t in row if t != PAD_ID]


def decode_batch(model, ids: Tensor, valid: Tensor, *, beam: int, max_len: int, alpha: float = 0.6) -> list[list[int]]:
    """Greedy for beam 1, else beam search."""
    if beam == 1:
        return greedy_decode(model, ids, valid, max_len=max_len)
    from lmlab.infer.beam import beam_search

    return beam_search(model, ids, beam=beam, max_len=max_len, alpha=alpha)


def translate(
    loaded, sentences: list[str], *, beam: int = 1, alpha: float = 0.6, max_len: int | None = None
) -> list[str]:
    """Translations of `sentences` by a loaded seq2seq run (greedy for beam 1); unknown words become <unk>."""
    from lmlab.data.pairs import to_torch
    from lmlab.reference.data.datasets import make_batch

    if loaded.src_tokenizer is None:
        from lmlab.errors import ConfigError

        raise ConfigError(f"translate: {loaded.run.path} is a decoder-only run; allowed: runs with model.arch=seq2seq")
    limit = loaded.config.model.max_seq_len - 1
    max_len = min(max_len or limit, limit)
    src = [loaded.src_tokenizer.encode(s, eos=True)[-limit:] for s in sentences]
    batch = to_torch(make_batch([(s, []) for s in src]))
    device = next(loaded.model.parameters()).device
    ids, valid = batch["X_ids"].to(device), batch["M_src"].to(device)
    hyps = decode_batch(loaded.model, ids, valid, beam=beam, max_len=max_len, alpha=alpha)
    return [loaded.tokenizer.decode(h) for h in hyps]


@torch.no_grad()
def evaluate_seq2seq(loaded, *, beam: int = 1, batch_size: int = 64) -> dict:
    """On the run's validation pairs: loss, token accuracy on non-pad positions, exact match and BLEU."""
    from lmlab.data.pairs import PairLoader, prepare_pairs
    from lmlab.model.seq2seq import forward_batch
    from lmlab.reference.train.metrics import bleu, token_accuracy

    data = prepare_pairs(loaded.config, (loaded.src_tokenizer, loaded.tokenizer))
    device = next(loaded.model.parameters()).device
    loss_sum = acc_sum = n_tok = 0.0
    exact = 0
    hyps_text = []
    for batch in PairLoader(data.val, batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        n = float(batch["M_tgt"].sum())
        out = forward_batch(loaded.model, batch)
        logits = out.logits
        loss_sum += float(out.loss) * n
        acc_sum += (
            token_accuracy(logits.argmax(-1).cpu().numpy(), batch["Y_out"].cpu().numpy(), batch["M_tgt"].cpu().numpy())
            * n
        )
        n_tok += n
        max_len = loaded.config.model.max_seq_len - 1
        hyps = decode_batch(loaded.model, batch["X_ids"], batch["M_src"], beam=beam, max_len=max_len)
        refs = [row[: int(m.sum())].tolist() for row, m in zip(batch["Y_out"], batch["M_tgt"], strict=True)]
        exact += sum(h == r for h, r in zip(hyps, refs, strict=True))
        hyps_text += [loaded.tokenizer.decode(h) for h in hyps]
    refs_text = [loaded.tokenizer.decode(loaded.tokenizer.encode(t)) for _, t in data.val_pairs]
    score, impl = bleu(hyps_text, refs_text)
    return {
        "run": str(loaded.run.path),
        "val_pairs": len(data.val),
        "val_loss": loss_sum / n_tok,
        "token_accuracy": acc_sum / n_tok,
        "exact_match": exact / len(data.val),
        "bleu": score,
        "bleu_impl": impl,
        "beam": beam,
    }
