"""Held-out loss of a trained run, on the validation split it was trained with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from lmlab.data.datasets import RandomWindowLoader, prepare_data
from lmlab.infer.load import load_run
from lmlab.utils.hardware import resolve_device


@torch.no_grad()
def evaluate_run(path: str | Path, *, iters: int = 50, batch_size: int | None = None, device: str = "auto") -> dict:
    """Mean validation loss (nats), bits per token and perplexity; also written to eval/eval.json."""
    dev = resolve_device(device)
    loaded = load_run(path, device=dev)
    cfg = loaded.config
    if cfg.model.arch == "seq2seq":
        from lmlab.infer.translate import evaluate_seq2seq

        result = evaluate_seq2seq(loaded, batch_size=batch_size or cfg.train.batch_size)
        (loaded.run.eval / "eval.json").write_text(json.dumps(result, indent=2))
        return result
    _, _, splits = prepare_data(cfg.data, loaded.tokenizer)
    loader = RandomWindowLoader(splits.val, batch_size or cfg.train.batch_size, cfg.seq_len, seed=0)
    losses = []
    for _ in range(iters):
        x, y = loader.sample()
        losses.append(float(loaded.model(x.to(dev), targets=y.to(dev)).loss))
    loss = sum(losses) / len(losses)
    result = {
        "run": str(loaded.run.path),
        "weights": str(loaded.weights),
        "val_loss": loss,
        "bits_per_token": loss / math.log(2),
        # Comparable across tokenizers: the same text's information per character.
        "bits_per_char": loss / math.log(2) * splits.meta["n_val"] / splits.meta["val_chars"],
        "perplexity": math.exp(loss),
        "batches": iters,
    }
    (loaded.run.eval / "eval.json").write_text(json.dumps(result, indent=2))
    return result
