"""Trackers and compare, read back through the tools' own readers."""

import json
import math
import struct
import subprocess
import sys
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from lmlab.config import resolve_config
from lmlab.errors import CheckpointError
from lmlab.pipeline.train import train_from_config
from lmlab.runs.run_dir import RunDir
from lmlab.track import compare
from lmlab.track.base import SafeTracker
from lmlab.track.jsonl import JSONLLogger, read_metrics
from lmlab.track.plots import html_report, plot_curves


def _train(tmp_path, corpus_file, tag="t", *, callbacks=(), tensorboard=True, aim=False, **train):
    cfg = resolve_config(
        cli={
            "data": {"name": f"file:{corpus_file}"},
            "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "max_seq_len": 32},
            "train": {
                "batch_size": 4,
                "max_steps": 6,
                "eval_interval": 3,
                "eval_iters": 2,
                "log_interval": 1,
                "save_dir": str(tmp_path),
                "run_tag": tag,
                "sample_tokens": 0,
                "progress": False,
                **train,
            },
            "track": {
                "trackers": [n for n, on in (("tensorboard", tensorboard), ("aim", aim)) if on],
                "hist_interval": 2,
            },
        },
        environ={},
    )
    return train_from_config(cfg, callbacks=callbacks, quiet=True)


def test_tensorboard_and_jsonl_read_back(tmp_path, corpus_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _train(tmp_path, corpus_file)
    tb = tmp_path / "tb" / result.run.path.name  # the save_dir's shared TensorBoard root, one folder a run
    acc = EventAccumulator(str(tb), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "train/mfu",
        "val/loss",
        "val/loss_by_tokens",
        "val/loss_by_gflops",
    ):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 7))
    assert [e.step for e in acc.Scalars("val/loss_by_tokens")] == [3 * 4 * 32, 6 * 4 * 32]
    assert (
        "params/blocks.0.ffn.fc.weight" in tags["histograms"] and "grads/blocks.0.ffn.fc.weight" in tags["histograms"]
    )
    assert [e.step for e in acc.Histograms("grads/tok_emb.weight")] == [2, 4, 6]
    lines = [json.loads(x) for x in (result.run.logs / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in lines if r["split"] == "val"]
    assert val[-1]["val_loss"] == pytest.approx(acc.Scalars("val/loss")[-1].value, rel=1e-6)
    assert all({"step", "tokens", "flops", "wall"} <= set(r) for r in lines if r["split"] == "train")
    meta = result.run.meta
    for name in ("full_config.json", "git.txt", "git.diff", "env.txt", "pip_freeze.txt", "data.json", "params.json"):
        assert (meta / name).is_file(), name
    assert "torch==" in (meta / "pip_freeze.txt").read_text()
    assert json.loads((meta / "data.json").read_text())["n_tokens"] > 0


AIM_READER = """
import json, sys
import aim
from aim.storage.context import Context
from aim.sdk.index_manager import RepoIndexManager

repo = aim.Repo(sys.argv[1])
indexer = RepoIndexManager(repo)
for run_hash in repo.list_all_runs():
    indexer.index(run_hash)  # finish indexing before reading, as `aim up` would
repo = aim.Repo(sys.argv[1])
runs = {repo.get_run(h).name: repo.get_run(h) for h in repo.list_all_runs()}
run = runs[sys.argv[2]]
out = {"runs": sorted(runs), "hash": run.hash, "hparams": run["hparams"], "git": run["git"], "name": run.name, "experiment": run.experiment, "metrics": {}}
for m in run.metrics():
    steps, (values, _epochs, _times) = m.data.items_list()
    out["metrics"][m.name + ":" + m.context.to_dict()["subset"]] = [steps, values]
for kind in ("param", "grad"):
    seq = run.get_distribution_sequence("tok_emb.weight", Context({"kind": kind}))
    steps, (dists, _e, _t) = seq.data.items_list()
    out[kind] = [steps, [int(d.to_np_histogram()[0].sum()) for d in dists]]
print(json.dumps(out))
"""


def test_aim_repo_read_back_through_aim_sdk(tmp_path, corpus_file):
    """Runs under one save_dir share one Aim repo; a resumed run continues its own Aim run."""
    pytest.importorskip("aim")
    first = _train(tmp_path, corpus_file, tensorboard=False, aim=True, max_steps=4)
    result = _train(tmp_path, corpus_file, tensorboard=False, aim=True, resume=str(first.run.path))
    other = _train(tmp_path, corpus_file, "u", tensorboard=False, aim=True, max_steps=2)
    proc = subprocess.run(
        [sys.executable, "-c", AIM_READER, str(tmp_path), result.run.path.name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["runs"] == sorted([result.run.path.name, other.run.path.name])  # resumed: still one Aim run
    assert out["hash"] == json.loads((result.run.meta / "aim_run.json").read_text())["hash"]
    assert out["name"] == result.run.path.name and out["experiment"] == "lmlab"
    assert out["hparams"]["model"]["d_model"] == 32 and out["hparams"]["train"]["max_steps"] == 6
    assert "commit" in out["git"]
    steps, losses = out["metrics"]["loss:train"]
    assert steps == list(range(1, 7)) and all(x > 0 for x in losses)
    lines = [json.loads(x) for x in (result.run.logs / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in lines if r["split"] == "val"]
    assert out["metrics"]["loss:val"] == [[3, 4, 6], [pytest.approx(r["val_loss"], rel=1e-6) for r in val]]
    assert out["metrics"]["tokens:val"][1] == [3 * 4 * 32, 4 * 4 * 32, 6 * 4 * 32]
    for key in ("lr:train", "grad_norm:train", "tokens_per_s:train", "flops:train", "wall:train"):
        assert out["metrics"][key][0] == list(range(1, 7)), key
    vocab = result.run.config().model.vocab_size
    for kind in ("param", "grad"):
        assert out[kind][0] == [2, 4, 6]
        assert out[kind][1] == [vocab * 32] * 3  # every element of the weight lands in one bin


def test_broken_tracker_warns_once_and_training_finishes(tmp_path, corpus_file, capsys):
    class Broken(SafeTracker):
        name = "broken"

        def log_step(self, trainer, metrics):
            raise RuntimeError("disk full")

    result = _train(tmp_path, corpus_file, callbacks=[Broken()], tensorboard=False, max_steps=5)
    err = capsys.readouterr().err
    assert err.count("broken tracker disabled: RuntimeError: disk full") == 1
    assert (result.run.checkpoints / "step_00000005" / "model.safetensors").is_file()


def _synthetic_run(root, name, batch, seq, arch_dim, vals):
    """A run directory with a config and hand-written metrics."""
    run = RunDir.create(root, name)
    cfg = resolve_config(
        cli={"model": {"d_model": arch_dim, "max_seq_len": seq}, "train": {"batch_size": batch}}, environ={}
    )
    cfg.save(run.config_path)
    tokens_per_step = batch * seq
    lines = []
    for step, loss in vals:
        lines.append(
            {
                "split": "train",
                "step": step,
                "tokens": step * tokens_per_step,
                "flops": step * tokens_per_step * 1000.0 * arch_dim,
                "wall": step * 0.5,
                "loss": loss,
                "tokens_per_s": 100.0,
                "mfu": 0.1,
                "peak_mem": 2**20,
            }
        )
        lines.append(
            {
                "split": "val",
                "step": step,
                "tokens": step * tokens_per_step,
                "flops": step * tokens_per_step * 1000.0 * arch_dim,
                "val_loss": loss,
            }
        )
    (run.logs / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return run.path


def test_compare_aligns_runs_on_tokens_and_flops(tmp_path):
    a = _synthetic_run(tmp_path, "small", batch=4, seq=32, arch_dim=64, vals=[(10, 3.0), (20, 2.5), (30, 2.2)])
    b = _synthetic_run(tmp_path, "big", batch=8, seq=32, arch_dim=128, vals=[(5, 2.9), (10, 2.4), (15, 2.1)])
    sa, sb = compare.compare([a, b])[::-1]  # ranked: b (2.1) first
    assert sb.best_val == 2.1 and sa.final_val == 2.2
    assert sa.curve("tokens")[0] == [1280, 2560, 3840] and sb.curve("tokens")[0] == [1280, 2560, 3840]
    assert sa.curve("step")[0] == [10, 20, 30] and sb.curve("step")[0] == [5, 10, 15]
    assert sb.curve("flops")[0] == [x * 1000.0 * 128 for x in (1280, 2560, 3840)]
    assert sa.curve("wall")[0] == [5.0, 10.0, 15.0]
    d = compare.diff(sa, sb, "tokens")
    assert d["config"]["model.d_model"] == (64, 128) and d["config"]["train.batch_size"] == (4, 8)
    assert [round(r["b_minus_a"], 6) for r in d["aligned"]] == [-0.1, -0.1, -0.1]  # same tokens, b is 0.1 lower


def test_html_report_and_pngs(tmp_path):
    a = _synthetic_run(tmp_path, "a", 4, 32, 64, [(10, 3.0), (20, 2.5)])
    b = _synthetic_run(tmp_path, "b", 8, 32, 64, [(10, 2.8), (20, 2.6)])
    summaries = compare.compare([a, b])
    pngs = plot_curves(summaries, tmp_path / "out")
    for p in pngs.values():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 100 and height > 100
    report = html_report(summaries, pngs, tmp_path / "out" / "report.html")

    class Parse(HTMLParser):
        imgs, cells, in_td = [], [], False

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.imgs.append(dict(attrs)["src"])
            self.in_td = tag == "td"

        def handle_data(self, data):
            if self.in_td:
                self.cells.append(data)

    parser = Parse()
    parser.feed(report.read_text())
    assert len(parser.imgs) == 4 and all(s.startswith("data:image/png;base64,") for s in parser.imgs)
    assert parser.cells[:2] == ["1", summaries[0].name] and "2.5000" in parser.cells


def test_bad_runs_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no runs given"):
        compare.compare([])
    with pytest.raises(CheckpointError, match="does not exist"):
        compare.load_summary(tmp_path / "missing")
    partial = RunDir.create(tmp_path, "p")
    resolve_config(environ={}).save(partial.config_path)
    with pytest.raises(CheckpointError, match=r"is partial \(missing logs/metrics.jsonl\)"):
        compare.load_summary(partial.path)
    old = RunDir.create(tmp_path, "old")
    old.config_path.write_text(json.dumps({"model": {"n_embd_old": 3}}))
    (old.logs / "metrics.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="older or different schema"):
        compare.load_summary(old.path)


def test_interpolate():
    assert compare.interpolate([0, 10, 20], [1.0, 2.0, 4.0], 15) == 3.0
    assert compare.interpolate([0, 10], [1.0, 2.0], 0) == 1.0
    assert compare.interpolate([0, 10], [1.0, 2.0], 11) is None


def test_latest_skips_runs_killed_before_their_config_was_written(tmp_path):
    done = RunDir.create(tmp_path, "k")
    resolve_config(environ={}).save(done.config_path)
    RunDir.create(tmp_path, "k")  # killed during set-up: no meta/full_config.json
    assert RunDir.latest(tmp_path, "k").path == done.path
    with pytest.raises(CheckpointError, match=r"is partial \(missing meta/full_config.json\)"):
        RunDir(tmp_path / sorted(p.name for p in tmp_path.iterdir())[-1]).config()


def test_missing_tracker_package_disables_it_and_training_finishes(tmp_path, corpus_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "aim", None)  # import aim -> ImportError, as if not installed
    result = _train(tmp_path, corpus_file, tensorboard=False, aim=True, max_steps=4)
    err = capsys.readouterr().err
    assert err.count("aim tracker disabled") == 1 and 'pip install "lmlab[track]"' in err
    assert (result.run.checkpoints / "step_00000004" / "model.safetensors").is_file()


def test_a_resume_drops_the_metrics_a_killed_run_wrote_after_its_last_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"split": "train", "step": s, "loss": 1.0 / s} for s in range(1, 7)] + [{"split": "val", "step": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"split": "train", "st')  # torn by the kill
    logger = JSONLLogger(path)
    logger.on_train_start(SimpleNamespace(step=4))
    assert read_metrics(path) == [r for r in rows if r["step"] <= 4]
    logger.on_train_start(SimpleNamespace(step=0))  # a fresh run leaves the file as it is
    assert read_metrics(path) == [r for r in rows if r["step"] <= 4]


AIM_LAYER_READER = """
import json, sys
import aim
from aim.sdk.index_manager import RepoIndexManager

repo = aim.Repo(sys.argv[1])
for run_hash in repo.list_all_runs():
    RepoIndexManager(repo).index(run_hash)
repo = aim.Repo(sys.argv[1])
run = repo.get_run(repo.list_all_runs()[0])
out = {}
for m in run.metrics():
    context = m.context.to_dict()
    if "layer" in context:
        steps, (values, _e, _t) = m.data.items_list()
        out[f"{m.name}:{context['layer']}"] = [steps, values]
print(json.dumps(out))
"""


def test_layer_statistics_reach_tensorboard_and_aim_and_leave_training_unchanged(tmp_path, corpus_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = _train(tmp_path / "plain", corpus_file, tensorboard=False)
    pytest.importorskip("aim")
    result = _train(tmp_path / "stats", corpus_file, aim=True, inspect_interval=2)
    losses = [
        [r["loss"] for r in read_metrics(run.run.logs / "metrics.jsonl") if r["split"] == "train"]
        for run in (plain, result)
    ]
    assert losses[0] == losses[1]  # the extra forward draws no random numbers and changes no weight
    acc = EventAccumulator(str(tmp_path / "stats" / "tb" / result.run.path.name), size_guidance={"scalars": 0})
    acc.Reload()
    for stat in ("act_rms", "attn_entropy", "grad_norm"):
        events = acc.Scalars(f"layers/{stat}/layer0")
        assert [e.step for e in events] == [2, 4, 6] and all(e.value > 0 for e in events), stat
    # attention entropy of a causal row is at most log(position + 1); averaged, below log(T)
    assert all(e.value < math.log(32) for e in acc.Scalars("layers/attn_entropy/layer0"))
    proc = subprocess.run(
        [sys.executable, "-c", AIM_LAYER_READER, str(tmp_path / "stats")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    tb_rms = [pytest.approx(e.value, rel=1e-6) for e in acc.Scalars("layers/act_rms/layer0")]
    assert out["act_rms:0"] == [[2, 4, 6], tb_rms] and out["grad_norm:0"][0] == [2, 4, 6]
