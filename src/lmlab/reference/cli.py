"""`lmlab reference prepare|train|translate --config FILE` (or `python -m lmlab.reference.cli ...`): the NumPy
seq2seq end to end, without torch.

The config file is flat YAML in four parts, as such configs are usually written:

    seed: 0                 # default for model.seed, train.seed and the validation split
    data:  {pairs: enfr, max_pairs: 50, val_split: 0.1, min_freq: 1, out_dir: runs/reference/x}
    model: {d_model: 32, n_head: 1, n_layer: 1, d_ff: 64}
    train: {epochs: 100, batch_size: 16, lr: 0.003, eval_every: 10}

Common foreign spellings are read as the field they mean (`num_heads`, `num_layers`, `learning_rate`,
`num_epochs`, `grad_clip`, `path`, ...). An unknown field is refused with the allowed ones named.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml

from lmlab.errors import ConfigError, LmlabError, user_errors
from lmlab.reference.nn.transformer import Seq2Seq, Seq2SeqConfig
from lmlab.reference.train.loop import LoopConfig, evaluate, load_checkpoint, save_checkpoint, train
from lmlab.text.pairs import encode_pairs, load_examples, load_pairs, make_batch, save_examples
from lmlab.text.words import Vocab, build_vocabs


@dataclass
class DataSection:
    """Where the pairs come from, how many are held out for validation, and where prepared files go."""

    pairs: str = "enfr"
    max_pairs: int | None = None
    min_freq: int = 1
    val_split: float = 0.1
    seed: int = 0
    out_dir: str = "runs/reference/enfr"


# The model section is Seq2SeqConfig's sizes (its vocabularies come from the data) plus `dropout`,
# which configs carry but the NumPy model does not have: only 0 is accepted.
ModelSection = dataclasses.make_dataclass(
    "ModelSection",
    [
        *(
            (f.name, f.type, dataclasses.field(default=f.default))
            for f in dataclasses.fields(Seq2SeqConfig)
            if f.name not in ("src_vocab", "tgt_vocab")
        ),
        ("dropout", float, dataclasses.field(default=0.0)),
    ],
)


ALIASES = {
    "data": {
        "path": "pairs",
        "dataset": "pairs",
        "file": "pairs",
        "val_fraction": "val_split",
        "output_dir": "out_dir",
    },
    "model": {
        "hidden_size": "d_model",
        "dim": "d_model",
        "n_heads": "n_head",
        "num_heads": "n_head",
        "n_layers": "n_layer",
        "num_layers": "n_layer",
        "dim_feedforward": "d_ff",
        "ffn_dim": "d_ff",
    },
    "train": {
        "num_epochs": "epochs",
        "max_epochs": "epochs",
        "learning_rate": "lr",
        "grad_clip": "clip",
        "max_grad_norm": "clip",
        "clip_grad_norm": "clip",
    },
}
SECTIONS = {"data": DataSection, "model": ModelSection, "train": LoopConfig}


def _section(name: str, data: Any, seed: int | None) -> Any:
    cls = SECTIONS[name]
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping of {', '.join(allowed)}")
    fields: dict[str, Any] = {}
    for key, value in data.items():
        field = ALIASES[name].get(key, key)
        if field not in allowed:
            raise ConfigError(f"{name}.{key}: unknown field; allowed: {', '.join(allowed)}")
        if field in fields:
            raise ConfigError(f"{name}.{field}: given twice")
        fields[field] = value
    if seed is not None:
        fields.setdefault("seed", seed)
    out = cls(**fields)
    if name == "model" and out.dropout:
        raise ConfigError(f"model.dropout: {out.dropout}; the NumPy reference has no dropout, allowed: 0")
    if name == "data" and not 0 <= out.val_split < 1:
        raise ConfigError(f"data.val_split: {out.val_split}; allowed: a fraction in [0, 1)")
    return out


def read_config(path: str | Path) -> tuple[DataSection, ModelSection, LoopConfig]:
    """The sections of a reference config file, foreign spellings read, unknown fields named."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must be a mapping with seed, data, model, train")
    unknown = sorted(set(raw) - {"seed", *SECTIONS})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section in {path}; allowed: seed, data, model, train")
    seed = raw.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ConfigError(f"seed: {seed!r}; allowed: an integer")
    return tuple(_section(name, raw.get(name) or {}, seed) for name in SECTIONS)  # type: ignore[return-value]


def split_pairs(pairs: list, val_split: float, seed: int) -> tuple[list, list]:
    """Shuffle with `seed` and hold out `val_split` of the pairs (at least one when the split is non-zero)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(pairs) * val_split)) if val_split else 0
    if len(pairs) - n_val < 1:
        raise LmlabError(f"data: {len(pairs)} pairs are too few to hold out {n_val} for validation")
    return [pairs[i] for i in sorted(order[n_val:])], [pairs[i] for i in sorted(order[:n_val])]


def prepare(config: str | Path) -> Path:
    """Read and split the pairs, build vocabularies on the training pairs, tokenise both splits:
    out_dir/{src_vocab,tgt_vocab}.json, pairs.npz and val.npz (with pairs.json and val_pairs.json to read)."""
    data, _, _ = read_config(config)
    pairs = load_pairs(data.pairs)[: data.max_pairs]
    train_pairs, val_pairs = split_pairs(pairs, data.val_split, data.seed)
    src, tgt = build_vocabs(train_pairs, data.min_freq)
    out = Path(data.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src.save(out / "src_vocab.json")
    tgt.save(out / "tgt_vocab.json")
    for name, split in (("pairs", train_pairs), ("val", val_pairs)):
        save_examples(out / f"{name}.npz", encode_pairs(split, src, tgt))
    (out / "pairs.json").write_text(json.dumps(train_pairs, ensure_ascii=False, indent=0))
    (out / "val_pairs.json").write_text(json.dumps(val_pairs, ensure_ascii=False, indent=0))
    return out


def train_from_config(config: str | Path, log=click.echo) -> dict:
    """Train on the prepared pairs, validating every epoch; writes out_dir/checkpoint.npz and history.json."""
    data, model_cfg, loop = read_config(config)
    out = Path(data.out_dir)
    if not (out / "pairs.npz").is_file():
        raise LmlabError(f"reference: {out / 'pairs.npz'} is missing; run `lmlab reference prepare --config {config}`")
    src, tgt = Vocab.load(out / "src_vocab.json"), Vocab.load(out / "tgt_vocab.json")
    examples = load_examples(out / "pairs.npz")
    val = load_examples(out / "val.npz") if (out / "val.npz").is_file() else []
    sizes = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k != "dropout"}
    model = Seq2Seq(Seq2SeqConfig(src_vocab=len(src), tgt_vocab=len(tgt), **sizes))
    init = evaluate(model, examples[:64], greedy=False)
    log(
        f"{len(examples)} pairs, {len(val)} held out | vocab {len(src)} -> {len(tgt)} | "
        f"init loss {init['loss']:.4f} (log V = {np.log(len(tgt)):.4f})"
    )
    history = train(model, examples, loop, log=log, val=val)
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


def main() -> None:
    """`python -m lmlab.reference.cli prepare|train|translate --config FILE`."""
    reference_group(prog_name="python -m lmlab.reference.cli")


@reference_group.command("prepare")
@CONFIG
@user_errors
def prepare_cmd(config: str) -> None:
    """Build vocabularies and tokenised pairs."""
    out = prepare(config)
    click.echo(f"prepared {out}: src_vocab.json, tgt_vocab.json, pairs.npz (training), val.npz (held out)")


@reference_group.command("train")
@CONFIG
@user_errors
def train_cmd(config: str) -> None:
    """Train and save checkpoint.npz."""
    last = train_from_config(config)
    held_out = f" | val loss {last['val_loss']:.4f} | val acc {last['val_acc']:.3f}" if "val_loss" in last else ""
    click.echo(f"done: loss {last['train_loss']:.4f} | exact match {last['exact_match']:.3f}{held_out}")


@reference_group.command("translate")
@CONFIG
@click.argument("sentences", nargs=-1, required=True)
@user_errors
def translate_cmd(config: str, sentences: tuple[str, ...]) -> None:
    """Translate sentences with the trained checkpoint."""
    for s, t in zip(sentences, translate(config, list(sentences)), strict=True):
        click.echo(f"{s} -> {t}")


if __name__ == "__main__":
    main()
