"""The NumPy encoder-decoder with hand-written backprop: check its gradients, then train it.

`lmlab.reference` imports no torch. This example builds a small Seq2Seq, compares the analytic
gradient of a few parameters with central finite differences (float64), then trains it on the
`reverse` task and reports the loss and how many training sequences greedy decoding reverses exactly.

    python examples/04_numpy_reference.py [--epochs 150] [--tiny]
"""

from __future__ import annotations

import argparse

import numpy as np

from lmlab.reference.nn.losses import cross_entropy_masked
from lmlab.reference.nn.transformer import Seq2Seq, Seq2SeqConfig
from lmlab.reference.train.loop import LoopConfig, train
from lmlab.text.pairs import encode_pairs, make_batch, synthetic_pairs
from lmlab.text.words import build_vocabs


def loss_of(model: Seq2Seq, batch: dict[str, np.ndarray]) -> float:
    """Teacher-forced masked cross-entropy."""
    logits = model.forward(batch["X_ids"], batch["M_src"], batch["Y_in"], batch["M_tgt"])
    return cross_entropy_masked(logits, batch["Y_out"], batch["M_tgt"])[0]


def gradient_check(model: Seq2Seq, batch: dict[str, np.ndarray], samples: int = 5, eps: float = 1e-6) -> float:
    """Largest error between backprop and central differences over a few entries of every parameter, relative to
    that parameter's largest gradient entry."""
    model.astype(np.float64)
    model.zero_grad()
    logits = model.forward(batch["X_ids"], batch["M_src"], batch["Y_in"], batch["M_tgt"])
    model.backward(cross_entropy_masked(logits, batch["Y_out"], batch["M_tgt"])[1])
    grads, params = model.gradients(), model.parameters()
    rng = np.random.default_rng(0)
    worst = 0.0
    for name, p in params.items():
        for _ in range(samples):
            i = tuple(rng.integers(0, n) for n in p.shape)
            old = p[i]
            p[i] = old + eps
            up = loss_of(model, batch)
            p[i] = old - eps
            down = loss_of(model, batch)
            p[i] = old
            numeric = (up - down) / (2 * eps)
            # Floored at 1e-4: finite differences cannot resolve gradients near 0 (a key bias's is exactly 0).
            worst = max(worst, abs(numeric - grads[name][i]) / max(float(np.abs(grads[name]).max()), 1e-4))
    return worst


def main() -> None:
    """Gradient check, then train on `reverse`."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--tiny", action="store_true", help="a short run (what the tests run)")
    args = ap.parse_args()
    pairs = synthetic_pairs("reverse", 64 if args.tiny else 200, seed=0)
    src, tgt = build_vocabs(pairs)
    examples = encode_pairs(pairs, src, tgt)
    cfg = Seq2SeqConfig(src_vocab=len(src), tgt_vocab=len(tgt), d_model=32, n_head=2, n_layer=1, seed=0)
    model = Seq2Seq(cfg)
    err = gradient_check(model, make_batch(examples[:4]))
    print(f"gradient check: max relative error {err:.2e} over every parameter (float64)")
    assert err < 1e-4
    model.astype(np.float32)
    epochs = 30 if args.tiny else args.epochs
    history = train(model, examples, LoopConfig(epochs=epochs, batch_size=16, lr=3e-3, eval_every=10))
    first, last = history[0], history[-1]
    print(f"train loss {first['train_loss']:.3f} -> {last['train_loss']:.3f}; exact match {last['exact_match']:.2f}")
    assert last["train_loss"] < first["train_loss"]


if __name__ == "__main__":
    main()
