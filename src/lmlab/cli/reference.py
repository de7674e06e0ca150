"""`lmlab reference prepare|train|translate --config FILE`: the NumPy seq2seq end to end (no torch)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml

from lmlab.cli.errors import user_errors
from lmlab.errors import ConfigError, LmlabError
from lmlab.reference.nn.transformer import Seq2Seq, Seq2SeqConfig
from lmlab.reference.train.loop import LoopConfig, evaluate, load_checkpoint, save_checkpoint, train
from lmlab.text.pairs import encode_pairs, load_examples, load_pairs, make_batch, save_examples
from lmlab.text.words import Vocab, build_vocabs


@dataclass
class DataSection:
    """Where the pairs come from and where prepared files go."""

    pairs: str = "enfr"
    max_pairs: int | None = None
    min_freq: int = 1
    out_dir: str = "runs/reference/enfr"


MODEL_FIELDS = {"d_model", "n_head", "n_layer", "d_ff", "eps", "seed"}


def _section(cls: type, data: Any, name: str, allowed: set[str] | None = None) -> Any:
    allowed = allowed or {f.name for f in dataclasses.fields(cls)}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping of {', '.join(sorted(allowed))}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown field; allowed: {', '.join(sorted(allowed))}")
    return data if cls is dict else cls(**data)


def read_config(path: str | Path) -> tuple[DataSection, dict, LoopConfig]:
    """The three sections of a reference config file, with unknown fields named."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - {"data", "model", "train"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section in {path}; allowed: data, model, train")
    return (
        _section(DataSection, raw.get("data", {}), "data"),
        _section(dict, raw.get("model", {}), "model", MODEL_FIELDS),
        _section(LoopConfig, raw.get("train", {}), "train"),
    )


def prepare(config: str | Path) -> Path:
    """Read pairs, build vocabularies, tokenise: out_dir/{src_vocab,tgt_vocab}.json and pairs.npz."""
    data, _, _ = read_config(config)
    pairs = load_pairs(data.pairs)[: data.max_pairs]
    src, tgt = build_vocabs(pairs, data.min_freq)
    out = Path(data.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src.save(out / "src_vocab.json")
    tgt.save(out / "tgt_vocab.json")
    save_examples(out / "pairs.npz", encode_pairs(pairs, src, tgt))
    (out / "pairs.json").write_text(json.dumps(pairs, ensure_ascii=False, indent=0))
    return out


def train_from_config(config: str | Path, log=click.echo) -> dict:
    """Train on the prepared pairs; writes out_dir/checkpoint.npz and history.json."""
    data, model_cfg, loop = read_config(config)
    out = Path(data.out_dir)
    if not (out / "pairs.npz").is_file():
        raise LmlabError(f"reference: {out / 'pairs.npz'} is missing; run `lmlab reference prepare --config {config}`")
    src, tgt = Vocab.load(out / "src_vocab.json"), Vocab.load(out / "tgt_vocab.json")
    examples = load_examples(out / "pairs.npz")
    model = Seq2Seq(Seq2SeqConfig(src_vocab=len(src), tgt_vocab=len(tgt), **model_cfg))
    init = evaluate(model, examples[:64], max_len=2)
    log(
        f"{len(examples)} pairs | vocab {len(src)} -> {len(tgt)} | init loss {init['loss']:.4f} (log V = {np.log(len(tgt)):.4f})"
    )
    history = train(model, examples, loop, log=log)
    save_checkpoint(out / "checkpoint.npz", model)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return history[-1]


def translate(config: str | Path, sentences: list[str], max_len: int = 40) -> list[str]:
    """Greedy translations of sentences (unknown words become <unk>)."""
    data, _, _ = read_config(config)
    out = Path(data.out_dir)
    ckpt = out / "checkpoint.npz"
    if not ckpt.is_file():
        raise LmlabError(f"reference: {ckpt} is missing; run `lmlab reference train --config {config}`")
    src, tgt = Vocab.load(out / "src_vocab.json"), Vocab.load(out / "tgt_vocab.json")
    model = load_checkpoint(ckpt)
    b = make_batch([(src.encode(s, eos=True), []) for s in sentences])
    return [tgt.decode(ids) for ids in model.greedy_decode(b["X_ids"], b["M_src"], max_len=max_len)]


@click.group("reference")
def reference_group() -> None:
    """The NumPy-only encoder-decoder with hand-written backprop (no torch)."""


CONFIG = click.option("--config", required=True, help="experiments/configs/tiny_enfr.yaml or small_enfr.yaml")


@reference_group.command("prepare")
@CONFIG
@user_errors
def prepare_cmd(config: str) -> None:
    """Build vocabularies and tokenised pairs."""
    out = prepare(config)
    click.echo(f"prepared {out}: src_vocab.json, tgt_vocab.json, pairs.npz")


@reference_group.command("train")
@CONFIG
@user_errors
def train_cmd(config: str) -> None:
    """Train and save checkpoint.npz."""
    last = train_from_config(config)
    click.echo(f"done: loss {last['train_loss']:.4f} | exact match {last['exact_match']:.3f}")


@reference_group.command("translate")
@CONFIG
@click.argument("sentences", nargs=-1, required=True)
@user_errors
def translate_cmd(config: str, sentences: tuple[str, ...]) -> None:
    """Translate sentences with the trained checkpoint."""
    for s, t in zip(sentences, translate(config, list(sentences)), strict=True):
        click.echo(f"{s} -> {t}")
