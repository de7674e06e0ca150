"""The training loop: forward, masked cross-entropy, backward, clip, optimiser step; evaluation; checkpoints."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmlab.reference.nn.losses import cross_entropy_masked
from lmlab.reference.nn.transformer import Seq2Seq, Seq2SeqConfig
from lmlab.reference.train.optim import SGD, Adam, clip_grad_norm
from lmlab.text.metrics import exact_match, token_accuracy
from lmlab.text.pairs import batches, make_batch
from lmlab.text.words import EOS_ID

Examples = list[tuple[list[int], list[int]]]


@dataclass
class LoopConfig:
    """How to train: epochs, batch size, optimiser, clipping; `stop_at_exact` ends training once greedy
    decoding reproduces that fraction of the training targets (checked every `eval_every` epochs).
    Validation loss and accuracy are measured every epoch and printed every `log_every` epochs."""

    epochs: int = 200
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 3e-3
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 10
    stop_at_exact: float | None = None
    max_len: int = 40
    log_every: int = 1


def train_step(model: Seq2Seq, batch: dict[str, np.ndarray], optimizer, clip: float) -> float:
    """One update on one batch; returns the batch loss."""
    model.zero_grad()
    logits = model.forward(batch["X_ids"], batch["M_src"], batch["Y_in"], batch["M_tgt"])
    loss, dlogits = cross_entropy_masked(logits, batch["Y_out"], batch["M_tgt"])
    model.backward(dlogits)
    grads = model.gradients()
    clip_grad_norm(grads, clip)
    optimizer.step(model.parameters(), grads)
    return loss


def evaluate(
    model: Seq2Seq, examples: Examples, *, batch_size: int = 64, max_len: int = 40, greedy: bool = True
) -> dict[str, float]:
    """Teacher-forced loss and token accuracy over `examples`, and (with `greedy`) greedy exact match."""
    losses, weights, accs, hyps = [], [], [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        b = make_batch(chunk)
        logits = model.forward(b["X_ids"], b["M_src"], b["Y_in"], b["M_tgt"])
        loss, _ = cross_entropy_masked(logits, b["Y_out"], b["M_tgt"])
        n = int(b["M_tgt"].sum())
        losses.append(loss * n)
        weights.append(n)
        accs.append(token_accuracy(logits.argmax(-1), b["Y_out"], b["M_tgt"]) * n)
        if greedy:
            hyps += model.greedy_decode(b["X_ids"], b["M_src"], max_len=max_len)
    total = sum(weights)
    out = {"loss": sum(losses) / total, "token_acc": sum(accs) / total}
    if greedy:
        refs = [[*t, EOS_ID] for _, t in examples]  # target + <eos>, as greedy_decode returns it
        out["exact_match"] = exact_match(hyps, refs)
    return out


def _epoch_line(record: dict[str, float]) -> str:
    parts = [f"epoch {record['epoch']:4d}", f"loss {record['train_loss']:.4f}"]
    if "val_loss" in record:
        parts += [f"val loss {record['val_loss']:.4f}", f"val acc {record['val_acc']:.3f}"]
    if "exact_match" in record:
        parts += [f"token acc {record['token_acc']:.3f}", f"exact {record['exact_match']:.3f}"]
    if "val_exact" in record:
        parts.append(f"val exact {record['val_exact']:.3f}")
    return " | ".join([*parts, f"{record['wall']:.1f}s"])


def train(
    model: Seq2Seq,
    examples: Examples,
    cfg: LoopConfig,
    log: Callable[[str], None] = print,
    *,
    val: Examples | None = None,
) -> list[dict[str, float]]:
    """Train on `examples`; one record per epoch (validation loss and token accuracy on `val` when given,
    greedy exact match on the training set and on `val` every `eval_every` epochs and at the end)."""
    optimizer = Adam(lr=cfg.lr) if cfg.optimizer == "adam" else SGD(lr=cfg.lr, momentum=0.9)
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        losses = [
            train_step(model, b, optimizer, cfg.clip) for b in batches(examples, cfg.batch_size, seed=cfg.seed + epoch)
        ]
        record: dict[str, float] = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        checkpoint = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
        if val:
            scores = evaluate(model, val, max_len=cfg.max_len, greedy=checkpoint)
            record |= {"val_loss": scores["loss"], "val_acc": scores["token_acc"]}
            if checkpoint:
                record["val_exact"] = scores["exact_match"]
        if checkpoint:
            record |= evaluate(model, examples, max_len=cfg.max_len)
        record["wall"] = time.perf_counter() - t0
        history.append(record)
        if checkpoint or epoch % cfg.log_every == 0:
            log(_epoch_line(record))
        if checkpoint and cfg.stop_at_exact is not None and record["exact_match"] >= cfg.stop_at_exact:
            break
    return history


def save_checkpoint(path: str | Path, model: Seq2Seq) -> None:
    """Parameters and config in one .npz, written beside the target and renamed (never half-written)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __config__=np.array(json.dumps(model.cfg.to_dict())), **model.parameters())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> Seq2Seq:
    """A Seq2Seq rebuilt from a checkpoint written by `save_checkpoint`."""
    with np.load(path) as z:
        model = Seq2Seq(Seq2SeqConfig(**json.loads(str(z["__config__"]))))
        model.load({k: z[k] for k in z.files if k != "__config__"})
    return model
