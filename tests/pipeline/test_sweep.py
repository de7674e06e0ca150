"""Optuna sweeps: parsing, samplers, bad input, and an end-to-end grid through the CLI."""

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.errors import ConfigError
from lmlab.pipeline.sweep import parse_dim, run_sweep
from tests.helpers import small_train_args

pytest.importorskip("optuna")


def test_parse_dim_kinds_and_fields():
    d = parse_dim("lr=logfloat:1e-4:1e-2")
    assert (d.path, d.kind, d.low, d.high) == (("train", "lr"), "logfloat", 1e-4, 1e-2)
    d = parse_dim("model.ffn=mlp, swiglu")
    assert (d.path, d.kind, d.choices) == (("model", "ffn"), "choice", ["mlp", "swiglu"])
    assert parse_dim("n_embd=32,64").choices == [32, 64] and parse_dim("n_embd=32,64").path == ("model", "d_model")
    assert parse_dim("rope.theta=int:1000:20000").path == ("model", "rope", "theta")


@pytest.mark.parametrize(
    ("spec", "msg"),
    [
        ("lr", "not FIELD=SPEC"),
        ("lrr=0.1,0.2", "lrr: unknown field; did you mean 'lr'"),
        ("lr=logfloat:0:1", "LO > 0"),
        ("lr=float:2:1", "LO < HI"),
        ("lr=float:a:b", "LO < HI"),
    ],
)
def test_parse_dim_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_dim(spec)


def _fake_train(calls):
    """A stand-in trainer whose 'val loss' is a known bowl in (lr, d_model), so samplers can be checked."""

    def train(cfg, quiet=True):
        calls.append(cfg)
        loss = (cfg.train.lr - 3e-3) ** 2 * 1e5 + abs(cfg.model.d_model - 64) / 64
        return SimpleNamespace(metrics={"val_loss": loss}, run=SimpleNamespace(path=f"run{len(calls)}"))

    return train


def test_grid_visits_every_point_once(tmp_path, capsys):
    calls = []
    report = run_sweep(
        "tiny", ["lr=1e-3,3e-3", "d_model=32,64,96"], sampler="grid", save_dir=tmp_path, train_fn=_fake_train(calls)
    )
    seen = {(c.train.lr, c.model.d_model) for c in calls}
    assert len(calls) == 6 and seen == {(lr, d) for lr in (1e-3, 3e-3) for d in (32, 64, 96)}
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 12 and said[0].startswith("[1/6] sweep trial 0 ") and said[-1].endswith("; 0 to go")
    assert report["trials"][0]["params"] == {"train.lr": 3e-3, "model.d_model": 64}
    assert [c.train.run_tag for c in calls] == [f"trial{i:03d}" for i in range(6)]
    assert json.loads((tmp_path / "sweep.json").read_text())["trials"][0]["val_loss"] == pytest.approx(0.0)
    assert (tmp_path / "sweep.md").read_text().count("\n| ") == 8  # header, rule, 6 trials


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_samplers_stay_in_bounds_and_are_seeded(tmp_path, sampler):
    runs = []
    for _ in range(2):
        calls = []
        run_sweep(
            "tiny",
            ["lr=logfloat:1e-4:1e-1", "d_model=int:32:128:16"],
            sampler=sampler,
            trials=12,
            save_dir=tmp_path,
            train_fn=_fake_train(calls),
        )
        assert len(calls) == 12
        assert all(1e-4 <= c.train.lr <= 1e-1 and c.model.d_model in range(32, 129, 16) for c in calls)
        runs.append([(c.train.lr, c.model.d_model) for c in calls])
    assert runs[0] == runs[1]  # the sampler is seeded from train.seed


def test_invalid_interior_points_are_recorded_not_fatal(tmp_path):
    calls = []
    report = run_sweep(
        "tiny", ["d_model=int:32:64"], sampler="random", trials=12, save_dir=tmp_path, train_fn=_fake_train(calls)
    )
    assert all(c.model.d_model % c.model.n_head == 0 for c in calls)
    assert report["invalid"] and all("not divisible by n_head" in r["error"] for r in report["invalid"])
    assert len(report["trials"]) + len(report["invalid"]) == 12 == len(calls) + len(report["invalid"])
    assert "were invalid and not trained" in (tmp_path / "sweep.md").read_text()


def test_tpe_beats_random_on_a_bowl(tmp_path):
    best = {}
    for sampler in ("random", "tpe"):
        calls = []
        report = run_sweep(
            "tiny",
            ["lr=logfloat:1e-4:1e-1"],
            sampler=sampler,
            trials=40,
            save_dir=tmp_path,
            train_fn=_fake_train(calls),
        )
        best[sampler] = report["trials"][0]["val_loss"]
    assert best["tpe"] <= best["random"]


def test_bad_sweeps_fail_before_training(tmp_path):
    calls = []
    with pytest.raises(ConfigError, match="grid takes a,b,c"):
        run_sweep("tiny", ["lr=float:1e-4:1e-2"], sampler="grid", save_dir=tmp_path, train_fn=_fake_train(calls))
    with pytest.raises(ConfigError, match="--trials: required"):
        run_sweep("tiny", ["lr=1e-3"], sampler="tpe", save_dir=tmp_path, train_fn=_fake_train(calls))
    with pytest.raises(ConfigError, match="unknown feed-forward 'swigloo'"):
        run_sweep("tiny", ["ffn=mlp,swigloo"], sampler="grid", save_dir=tmp_path, train_fn=_fake_train(calls))
    with pytest.raises(ConfigError, match="n_head"):
        run_sweep(
            "tiny", ["d_model=int:30:64"], sampler="random", trials=2, save_dir=tmp_path, train_fn=_fake_train(calls)
        )
    assert calls == []


def test_sweep_cli_end_to_end(tmp_path, corpus_file):
    out = tmp_path / "sweep"
    args = ["sweep", "--param", "ffn=mlp,swiglu", "--sampler", "grid", "--out", str(out)]
    args += small_train_args(corpus_file, layers=1, max_steps=4, train__eval_iters=2, batch=4)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sweep.json").read_text())
    assert sorted(t["params"]["model.ffn"] for t in report["trials"]) == ["mlp", "swiglu"]
    for t in report["trials"]:
        assert (tmp_path / "sweep" / t["run"].split("/")[-1] / "meta" / "full_config.json").is_file()
    assert (out / "report.html").is_file() and "sweep.md" in result.output
