"""Rebuild a trained model and its tokenizer from a run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmlab.config import RunConfig
from lmlab.data.tokenizers.base import BaseTokenizer, load_tokenizer
from lmlab.model.build import build_model
from lmlab.runs import checkpoint as ckpt
from lmlab.runs.run_dir import RunDir


@dataclass
class LoadedRun:
    """A run's model (in eval mode), tokenizer and config."""

    run: RunDir
    config: RunConfig
    model: torch.nn.Module  # CausalLM or Seq2Seq
    tokenizer: BaseTokenizer  # the target side of an encoder-decoder run
    weights: Path
    src_tokenizer: BaseTokenizer | None = None  # encoder-decoder runs only
    decode: dict = field(default_factory=dict)  # how it is decoded when served: compile, draft, draft_tokens


def load_run(path: str | Path, *, device: str | torch.device = "cpu", checkpoint: str | None = None) -> LoadedRun:
    """The model of a run: its exported final weights, or else its newest valid checkpoint."""
    run = RunDir.open(path)
    cfg = run.config()
    model = build_model(cfg.model)
    if checkpoint:
        weights = Path(checkpoint) / "model.safetensors"
        ckpt.verify_checkpoint(checkpoint, ckpt.WEIGHTS)
    else:
        weights = run.final_weights()
    ckpt.load_weights(model, ckpt.read_weights(weights), weights)
    src_tok = load_tokenizer(run.src_tokenizer) if cfg.model.arch == "seq2seq" else None
    return LoadedRun(run, cfg, model.to(device).eval(), load_tokenizer(run.tokenizer), weights, src_tok)
