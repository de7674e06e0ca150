"""Translation and evaluation of encoder-decoder runs, greedy (decoding.py) or beam search (beam.py).

The encoder runs once; every decoder layer's cross-attention keys/values are computed once
from its output, and decoder self-attention keeps a KV cache, so each step costs one token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmlab.infer.beam import beam_search
from lmlab.infer.decoding import greedy_decode


def decode_batch(model, ids: Tensor, valid: Tensor, *, beam: int, max_len: int, alpha: float = 0.6) -> list[list[int]]:
    """Greedy for beam 1, else beam search."""
    if beam == 1:
        return greedy_decode(model, ids, valid, max_len=max_len)
    return beam_search(model, ids, beam=beam, max_len=max_len, alpha=alpha)


def translate(
    loaded, sentences: list[str], *, beam: int = 1, alpha: float = 0.6, max_len: int | None = None
) -> list[str]:
    """Translations of `sentences` by a loaded seq2seq run (greedy for beam 1); unknown words become <unk>."""
    from lmlab.data.pairs import to_torch
    from lmlab.text.pairs import make_batch

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
    from lmlab.text.metrics import bleu, token_accuracy

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
