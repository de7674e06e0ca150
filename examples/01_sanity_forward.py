"""One batch through a freshly built model: the shapes, and a loss close to log(vocab size).

At initialisation the model should be close to uniform over the vocabulary, so the mean
next-token cross-entropy sits near ln V. A loss far from it means broken initialisation, a
broken mask or a mis-wired head, and is worth catching before any training.

    python examples/01_sanity_forward.py [--preset llama] [--tiny]
"""

from __future__ import annotations

import argparse
import math

import torch

from lmlab import ModelConfig, build_model


def main() -> None:
    """Build, run one batch, print and check."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama")
    ap.add_argument("--tiny", action="store_true", help="smallest sizes (what the tests run)")
    args = ap.parse_args()
    torch.manual_seed(0)
    dims = {"n_layer": 2, "d_model": 64, "n_head": 4} if args.tiny else {"n_layer": 4, "d_model": 256, "n_head": 8}
    cfg = ModelConfig.from_preset(args.preset, vocab_size=512, max_seq_len=128, **dims)
    model = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (4, 65))
    x, y = ids[:, :-1], ids[:, 1:]
    out = model(x, targets=y)
    expected = math.log(cfg.vocab_size)
    print(f"model   {cfg.arch_name()}  ({model.num_params():,} parameters)")
    print(f"input   {tuple(x.shape)}  ->  logits {tuple(out.logits.shape)}")
    print(f"loss    {out.loss.item():.4f}   ln V = {expected:.4f}")
    assert out.logits.shape == (4, 64, cfg.vocab_size)
    assert abs(out.loss.item() - expected) < 0.25, "initial loss should be close to ln V"
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    print("every parameter received a gradient")


if __name__ == "__main__":
    main()
