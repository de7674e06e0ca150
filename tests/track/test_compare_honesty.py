"""`lmlab compare` refuses apples to oranges: tokenizers differ -> bits per byte; corpora differ -> marked."""

import json
import math

from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.runs.run_dir import RunDir
from lmlab.track import compare
from tests.helpers import small_train_args


def _run(root, corpus, tag, *extra):
    args = small_train_args(corpus, layers=1, dim=16, seq_len=16, batch=2, max_steps=2, train__eval_iters=1)
    result = CliRunner().invoke(cli, ["train", *args, "--save-dir", str(root), "--run-tag", tag, *extra])
    assert result.exit_code == 0, result.output
    return RunDir.latest(root, tag).path


def test_compare_converts_units_marks_other_data_and_guards_diff(tmp_path, corpus_file):
    other = tmp_path / "other.txt"
    other.write_text("a completely different validation text, with other words in it.\n" * 40)
    char = _run(tmp_path / "runs", corpus_file, "char", "--tokenizer", "char")
    byte = _run(tmp_path / "runs", corpus_file, "byte", "--tokenizer", "byte")
    elsewhere = _run(tmp_path / "runs", other, "elsewhere", "--tokenizer", "char")

    ranked = compare.compare([char, byte])
    assert {s.unit for s in ranked} == {"byte"}
    for s in ranked:
        raw = compare.load_summary(s.path)
        data = json.loads((s.path / "meta/data.json").read_text())
        assert math.isclose(s.best_val, raw.best_val * data["n_val"] / data["val_bytes"] / math.log(2))
    out = CliRunner().invoke(cli, ["compare", str(char), str(byte), "--out", str(tmp_path / "c1")])
    assert out.exit_code == 0, out.output
    assert "runs ranked by best validation bits per byte" in out.output and "different tokenizers" in out.output
    same = CliRunner().invoke(cli, ["compare", str(char), str(char), "--diff"])
    assert same.exit_code == 0 and "nats/token" in same.output and "note:" not in same.output

    mixed = CliRunner().invoke(cli, ["compare", str(char), str(elsewhere), "--out", str(tmp_path / "c2")])
    assert mixed.exit_code == 0 and "validated on different data" in mixed.output and "val data" in mixed.output
    refused = CliRunner().invoke(cli, ["compare", str(char), str(elsewhere), "--diff"])
    assert refused.exit_code == 2 and "--force" in refused.output
    forced = CliRunner().invoke(cli, ["compare", str(char), str(elsewhere), "--diff", "--force"])
    assert forced.exit_code == 0, forced.output

    data_file = elsewhere / "meta/data.json"  # a run that recorded no text counts (as encoder-decoders do)
    data = json.loads(data_file.read_text())
    data_file.write_text(json.dumps({k: v for k, v in data.items() if k not in ("val_chars", "val_bytes")}))
    apart = CliRunner().invoke(cli, ["compare", str(char), str(elsewhere), "--out", str(tmp_path / "c3")])
    assert apart.exit_code == 0 and "cannot be put on one scale" in apart.output
    assert not any(s.comparable for s in compare.compare([char, elsewhere]))

    missing = CliRunner().invoke(cli, ["compare", "--latest", "4", "--root", str(tmp_path / "runs/ablate")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
