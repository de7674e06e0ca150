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
