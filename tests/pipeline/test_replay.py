"""`lmlab replay`: a run re-trained from its record reproduces its logged losses, and says when it cannot."""

import json

import pytest
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.errors import CheckpointError, DataError
from lmlab.pipeline.replay import replay
from lmlab.runs.run_dir import RunDir
from lmlab.track.jsonl import read_metrics
from tests.helpers import small_train_args


@pytest.fixture
def trained(tmp_path, corpus_file):
    args = ["train", *small_train_args(corpus_file, layers=1, max_steps=8, batch=4, save_dir=tmp_path / "runs")]
    args += ["--train.log_interval", "2", "--train.eval_interval", "4", "--train.eval_iters", "2", "--dropout", "0.1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return RunDir.latest(tmp_path / "runs")


def test_replay_reproduces_logged_losses(trained, tmp_path):
    out = replay(trained.path, steps=6, save_dir=tmp_path / "again")
    assert out["ok"], out["message"]
    assert [r["step"] for r in out["rows"]] == [2, 4, 6]
    recorded = [r["loss"] for r in read_metrics(trained.logs / "metrics.jsonl") if r["split"] == "train"][:3]
    assert [r["recorded"] for r in out["rows"]] == recorded
    assert all(r["replayed"] == r["recorded"] for r in out["rows"])  # bit-identical on CPU
    again = RunDir.latest(tmp_path / "again")
    assert again.config().model == trained.config().model


def test_replay_cli_reports_a_mismatch(trained):
    lines = (trained.logs / "metrics.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    assert rec["split"] == "train" and rec["step"] == 4
    rec["loss"] += 1e-3
    lines[1] = json.dumps(rec)
    (trained.logs / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["replay", str(trained.path), "--steps", "4"])
    assert result.exit_code == 1
    assert "losses differ from step 4 on (1 of 2 beyond rtol 1e-05)" in result.output


def test_replay_refuses_a_changed_corpus_or_a_partial_run(trained, corpus_file, tmp_path):
    corpus_file.write_text(corpus_file.read_text() + "one more line.\n")
    with pytest.raises(DataError, match="is not the one .* trained on"):
        replay(trained.path)
    (trained.meta / "data.json").unlink()
    with pytest.raises(CheckpointError, match=r"partial \(missing meta/data.json\)"):
        replay(trained.path)
    with pytest.raises(CheckpointError, match="does not exist"):
        replay(tmp_path / "nope")


def test_a_resumed_run_keeps_a_true_record_and_replays_across_its_resumes(tmp_path, corpus_file):
    """Train 4 steps, resume to 8, then to 10 with a new lr: config, history, wall, message and replay all follow."""
    base = small_train_args(corpus_file, layers=1, batch=4, save_dir=tmp_path / "runs")
    base += ["--train.log_interval", "1", "--train.eval_interval", "2", "--train.eval_iters", "1", "--dropout", "0.1"]
    assert CliRunner().invoke(cli, ["train", *base, "--max-steps", "4"]).exit_code == 0
    run = RunDir.latest(tmp_path / "runs")
    resume = ["--train.resume", str(run.path)]
    second = CliRunner().invoke(cli, ["train", *base, *resume, "--max-steps", "8"])
    assert second.exit_code == 0, second.output
    assert f"resuming {run.path} at step 4 from {run.checkpoints / 'step_00000004'}" in second.output
    third = CliRunner().invoke(cli, ["train", *base, "--train.resume", "auto", "--max-steps", "10", "--lr", "5e-4"])
    assert third.exit_code == 0, third.output
    cfg = run.config()
    assert cfg.train.max_steps == 10 and cfg.train.lr == 5e-4  # the config training ended with
    history = run.resumes()
    assert [(r["step"], r["changed"]["train.max_steps"]) for r in history] == [(4, [4, 8]), (8, [8, 10])]
    assert history[1]["changed"]["train.lr"] == [1e-3, 5e-4] and "train.lr" not in history[0]["changed"]
    walls = [r["wall"] for r in read_metrics(run.logs / "metrics.jsonl") if r["split"] == "train"]
    assert len(walls) == 10 and walls == sorted(walls)  # cumulative across the two resumes, never back to 0
    out = replay(run.path, steps=10)
    assert out["ok"], out["message"]
    assert [r["step"] for r in out["rows"]] == list(range(1, 11))
