"""Optuna sweeps: parsing, samplers, bad input, and an end-to-end grid through the CLI."""

import json
import subprocess
import sys
from pathlib import Path
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
    for i in range(2):
        calls = []
        run_sweep(
            "tiny",
            ["lr=logfloat:1e-4:1e-1", "d_model=int:32:128:16"],
            sampler=sampler,
            trials=12,
            save_dir=tmp_path / str(i),
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
            save_dir=tmp_path / sampler,
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
    args = ["sweep", "--param", "ffn=mlp,swiglu", "--sampler", "grid", "--out", str(out), "-j", "2"]
    args += small_train_args(corpus_file, layers=1, max_steps=4, train__eval_iters=2, batch=4)
    result = CliRunner().invoke(cli, args)  # two trials side by side, each in its own process
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sweep.json").read_text())
    assert sorted(t["params"]["model.ffn"] for t in report["trials"]) == ["mlp", "swiglu"]
    for t in report["trials"]:
        assert (tmp_path / "sweep" / t["run"].split("/")[-1] / "meta" / "full_config.json").is_file()
    assert (out / "report.html").is_file() and "sweep.md" in result.output


def test_two_sweep_processes_on_one_journal_cover_a_six_point_grid_exactly_once(tmp_path, corpus_file):
    import optuna

    from lmlab.pipeline.sweep import open_storage

    journal = tmp_path / "shared.journal"
    args = ["-m", "lmlab", "sweep", "--param", "lr=1e-3,2e-3,3e-3", "--param", "ffn=mlp,swiglu", "--sampler", "grid"]
    args += ["--storage", f"journal:{journal}", "--study-name", "grid6"]
    args += small_train_args(corpus_file, layers=1, dim=16, max_steps=2, train__eval_iters=1, batch=2)
    procs = [
        subprocess.Popen([sys.executable, *args, "--out", str(tmp_path / f"p{i}")], stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    study = optuna.load_study(study_name="grid6", storage=open_storage(optuna, f"journal:{journal}"))
    trials = study.get_trials()
    points = [(t.params["train.lr"], t.params["model.ffn"]) for t in trials]
    assert len(trials) == 6 and len(set(points)) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    owners = {t.user_attrs["owner"] for t in trials}
    assert len(owners) <= 2 and all(Path(t.user_attrs["run"]).is_dir() for t in trials)


def test_a_sweep_run_again_continues_its_search_and_a_changed_one_is_refused(tmp_path):
    calls = []
    run_sweep(
        "tiny", ["lr=logfloat:1e-4:1e-1"], sampler="random", trials=3, save_dir=tmp_path, train_fn=_fake_train(calls)
    )
    report = run_sweep(
        "tiny", ["lr=logfloat:1e-4:1e-1"], sampler="random", trials=3, save_dir=tmp_path, train_fn=_fake_train(calls)
    )
    assert len(calls) == 3 and len(report["trials"]) == 3  # nothing left to do the second time
    with pytest.raises(ConfigError, match="holds a different sweep plan"):
        run_sweep(
            "tiny", ["lr=logfloat:1e-4:1e-1"], sampler="tpe", trials=3, save_dir=tmp_path, train_fn=_fake_train(calls)
        )


def test_the_pruner_stops_a_run_whose_validation_loss_lags_the_median(tmp_path):
    import optuna

    from lmlab.pipeline.sweep import PruneCallback, make_pruner, open_storage
    from lmlab.trainer.callbacks import Event

    url = f"journal:{tmp_path / 'j.journal'}"
    study = optuna.create_study(
        study_name="s", storage=open_storage(optuna, url), pruner=make_pruner(optuna, "median", 10)
    )
    for _ in range(3):
        done = study.ask()
        done.report(1.0, 1)
        study.tell(done, 1.0)
    running = study.ask()
    callback = PruneCallback({"storage": url, "study": "s", "trial_id": running._trial_id, "pruner": "median"})
    trainer = SimpleNamespace(step=1, should_stop=None)
    callback(trainer, Event("eval_end", {"val_loss": 0.5}))
    assert trainer.should_stop is None  # better than the median: it goes on
    callback2 = PruneCallback({"storage": url, "study": "s", "trial_id": study.ask()._trial_id, "pruner": "median"})
    callback2(trainer, Event("eval_end", {"val_loss": 5.0}))
    assert trainer.should_stop == "pruned by the median pruner at step 1"
