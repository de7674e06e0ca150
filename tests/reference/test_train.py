"""The reference learns: init loss ~ log V, memorises 50 pairs, translates through the CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.text.metrics import bleu, corpus_bleu, exact_match, token_accuracy

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@pytest.fixture
def config(tmp_path):
    cfg = yaml.safe_load(CONFIGS.joinpath("tiny_enfr.yaml").read_text())
    cfg["data"]["out_dir"] = str(tmp_path / "out")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_enfr_memorises_50_pairs_through_the_cli(config, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["reference", "prepare", "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["reference", "train", "--config", str(config)])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    init, log_v = (float(first.split(x)[1].split()[0].strip("()")) for x in ("init loss", "log V ="))
    assert abs(init - log_v) < 0.1  # near-uniform predictions at init
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history[-1]["exact_match"] == 1.0 and history[-1]["token_acc"] == 1.0
    pairs = json.loads((tmp_path / "out" / "pairs.json").read_text())
    held_out = json.loads((tmp_path / "out" / "val_pairs.json").read_text())
    assert (len(pairs), len(held_out)) == (45, 5) and not {tuple(p) for p in pairs} & {tuple(p) for p in held_out}
    assert all(0 <= h["val_acc"] <= 1 and h["val_loss"] > 0 for h in history)  # every epoch validates
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    result = runner.invoke(cli, ["reference", "translate", "--config", str(config), pairs[3][0], "i am zorglub."])
    assert result.exit_code == 0, result.output
    assert f"{pairs[3][0]} -> {pairs[3][1]}" in result.output
    assert "i am zorglub. -> " in result.output  # unknown word: <unk>, not an exception


FLAT = """
seed: 3
data:
  path: task:reverse:60
  val_split: 0.2
  out_dir: {out}
model:
  hidden_size: 16
  num_heads: 2
  num_layers: 1
  dim_feedforward: 32
  dropout: 0.0
train:
  num_epochs: 3
  batch_size: 8
  learning_rate: 0.003
  grad_clip: 1.0
  eval_every: 3
"""


def test_the_flat_yaml_schema_runs_as_a_module(tmp_path):
    """`python -m lmlab.reference.cli train --config X` with the sections written as users write them."""
    import subprocess
    import sys

    from lmlab.reference.cli import read_config

    path = tmp_path / "flat.yaml"
    path.write_text(FLAT.format(out=tmp_path / "out"))
    data, model, loop = read_config(path)
    assert (data.pairs, data.val_split, data.seed, model.d_model, model.n_head, model.d_ff) == (
        "task:reverse:60",
        0.2,
        3,
        16,
        2,
        32,
    )
    assert (model.seed, loop.seed, loop.epochs, loop.lr, loop.clip) == (3, 3, 3, 0.003, 1.0)
    run = [sys.executable, "-m", "lmlab.reference.cli"]
    for command in ("prepare", "train"):
        result = subprocess.run([*run, command, "--config", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("48 pairs, 12 held out")
    epochs = [line for line in lines if line.startswith("epoch")]
    assert len(epochs) == 3 and all("val loss" in line and "val acc" in line for line in epochs)
    assert lines[-1].startswith("done:") and "val acc" in lines[-1]
    path.write_text(FLAT.format(out=tmp_path / "out").replace("dropout: 0.0", "dropout: 0.1"))
    result = subprocess.run([*run, "train", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and "model.dropout: 0.1; the NumPy reference has no dropout" in result.stderr


def test_bad_config_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {d_modle: 32}\n")
    result = CliRunner().invoke(cli, ["reference", "prepare", "--config", str(path)])
    assert result.exit_code == 2 and "model.d_modle: unknown field; allowed: d_ff, d_model" in result.output


def test_metrics():
    assert token_accuracy(np.array([[1, 2, 3]]), np.array([[1, 0, 3]]), np.array([[1, 1, 0]], bool)) == 0.5
    assert exact_match([[1, 2], [3]], [[1, 2], [4]]) == 0.5
    hyp = [["the", "cat", "sat", "on", "the", "mat", "today"]]
    assert corpus_bleu(hyp, hyp) == pytest.approx(100.0)
    ref = [["the", "cat", "is", "on", "the", "mat", "today"]]
    # Hand count: 1-grams 6/7, 2-grams 4/6, 3-grams 2/5, 4-grams 1/4; equal lengths -> BP = 1.
    expected = 100 * math.exp((math.log(6 / 7) + math.log(4 / 6) + math.log(2 / 5) + math.log(1 / 4)) / 4)
    assert corpus_bleu(hyp, ref) == pytest.approx(expected)


def test_local_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["the cat sat on the mat", "a dog runs in the park today", "hello there my friend"]
    refs = ["the cat is on the mat", "the dog runs in the park", "hello my good friend"]
    theirs = sacrebleu.corpus_bleu(hyps, [refs], smooth_method="none", tokenize="none").score
    assert corpus_bleu([h.split() for h in hyps], [r.split() for r in refs]) == pytest.approx(theirs, rel=1e-9)
    assert bleu(hyps, refs)[1] == "sacrebleu"
