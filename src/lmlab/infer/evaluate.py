"""Held-out loss of a trained run, on the validation split it was trained with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from lmlab.data.datasets import RandomWindowLoader, prepare_data
from lmlab.errors import DataError
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
        "bits_per_byte": loss / math.log(2) * splits.meta["n_val"] / splits.meta["val_bytes"],
        "perplexity": math.exp(loss),
        "batches": iters,
    }
    (loaded.run.eval / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def read_documents(path: str | Path) -> list[str]:
    """The documents of a .txt file (one) or a .jsonl file (one {"text": ...} per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"eval.documents: {path} is not a file")
    if path.suffix != ".jsonl":
        return [path.read_text(encoding="utf-8")]
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataError(f'eval.documents: {path}:{number} is not an object with a "text" string')
            docs.append(row["text"])
    return docs


@torch.no_grad()
def evaluate_documents(path: str | Path, documents: str | Path, *, batch_size: int = 8, device: str = "auto") -> dict:
    """Each document scored in full (`lmlab.infer.score`): bits per byte, character and token, and perplexities."""
    from lmlab.infer.score import score_documents

    loaded = load_run(path, device=resolve_device(device))
    if loaded.config.model.arch == "seq2seq":
        raise DataError("eval.documents: an encoder-decoder run scores pairs, not documents; leave it out")
    texts = read_documents(documents)
    score = score_documents(
        loaded.model, loaded.tokenizer, texts, max_len=loaded.config.model.max_seq_len, batch_size=batch_size
    )
    result = {"run": str(loaded.run.path), "weights": str(loaded.weights), "documents_file": str(documents)}
    result |= score.as_dict()
    (loaded.run.eval / "documents.json").write_text(json.dumps(result, indent=2))
    return result
