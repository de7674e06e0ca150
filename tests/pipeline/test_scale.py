"""The scaling ladder: rungs scale heads and FFN with width, tokens follow the parameters, the study runner
trains them (two jobs, status, a second call that trains nothing), and the report fits each variant."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.config import default_d_ff
from lmlab.errors import ConfigError
from lmlab.model.flops import flops_per_token
from lmlab.pipeline.scale import ladder_steps, non_embedding_params, run_scaling, rung
from lmlab.runs.run_dir import RunDir
from tests.conftest import tiny_cfg
from tests.helpers import small_train_args

pytestmark = pytest.mark.xdist_group("study")


def test_a_rung_keeps_depth_and_head_width_and_scales_the_rest():
    base = tiny_cfg("llama", n_head=4, n_kv_head=2, d_model=64)  # head width 16, two query heads per kv head
    wide = rung(base, 128)
    assert (wide.n_layer, wide.head_dim, wide.n_head, wide.n_kv_head) == (2, 16, 8, 4)
    assert wide.d_ff == default_d_ff(wide) and wide.mup_base_width is None
    own = rung(base.model_copy(update={"d_ff": 200}), 128)  # a d_ff of the user's keeps its ratio to d_model
    assert own.d_ff == 400 and rung(base, 96, mup_base=64).mup_base_width == 64
    with pytest.raises(ConfigError, match="48 gives 3 heads, not a multiple of 2"):
        rung(base, 48)
    steps = ladder_steps(wide, 20, 512)
    assert steps * 512 >= 20 * non_embedding_params(wide) > (steps - 1) * 512


def test_too_few_widths_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="3 or more widths"):
        run_scaling("llama", [32, 64], save_dir=tmp_path)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("scale")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox jumps over dog {i % 7}." for i in range(300)))
    args = ["scale", "--base", "llama", "--widths", "8,16,24", "--tokens-per-param", "0.5", "--seeds", "1"]
    args += ["--swap", "ffn=mlp", "--bootstrap", "50", "--out", str(root / "out"), "-j", "2", "--threads-per-job", "1"]
    args += small_train_args(corpus, layers=1, dim=8, heads=1, batch=4, train__eval_iters=2)
    done = subprocess.run([sys.executable, "-m", "lmlab", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "out", done


def test_the_ladder_trains_through_the_study_runner_and_fits_each_variant(ladder):
    out, done = ladder
    report = json.loads((out / "scale.json").read_text())
    assert [f["variant"] for f in report["fits"]] == ["base", "ffn=mlp"]
    assert len(report["points"]) == 2 * 3 and (out / "scale.png").stat().st_size > 0
    for p in report["points"]:
        cfg = RunDir(Path(p["run"])).config()
        assert cfg.model.d_model == p["width"] and cfg.model.n_head == p["width"] // 8
        per_step = cfg.train.batch_size * cfg.seq_len
        assert p["tokens"] == cfg.train.max_steps * per_step == ladder_steps(cfg.model, 0.5, per_step) * per_step
        assert p["compute"] == flops_per_token(cfg.model, cfg.seq_len, training=True) * p["tokens"]
    for f in report["fits"]:
        lowest = min(p["val_loss"] for p in report["points"] if p["variant"] == f["variant"])
        assert 0 <= f["E"] <= lowest and 0 < f["alpha"] <= 5 and math.isfinite(f["rmse"])
    table = (out / "scale.md").read_text()
    assert "| ffn=mlp | 24 |" in table and "The fits of base and ffn=mlp" in table
    assert "training on cpu job 1 (1 thread)" in done.stderr  # two jobs side by side


def test_a_finished_ladder_has_a_status_and_is_not_trained_again(ladder):
    out, _ = ladder
    status = subprocess.run(
        [sys.executable, "-m", "lmlab", "study", "status", str(out)], capture_output=True, text=True
    )
    assert status.returncode == 0 and "6/6 complete" in status.stdout, status.stderr
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/artifacts/checkpoints/*/meta.json")}
    plan = json.loads((out / "study.json").read_text())
    assert plan["kind"] == "scale" and plan["spec"]["widths"] == [8, 16, 24]
    flags = {  # what the command's flags gave
        "data": {"name": f"file:{out.parent / 'corpus.txt'}"},
        "model": {"n_layer": 1, "d_model": 8, "n_head": 1, "max_seq_len": 32},
        "train": {"sample_tokens": 0, "progress": False, "batch_size": 4, "eval_iters": 2},
    }
    first = json.loads((out / "scale.json").read_text())
    again = run_scaling(
        "llama",
        [8, 16, 24],
        swaps=["ffn=mlp"],
        tokens_per_param=0.5,
        seeds=1,
        save_dir=out,
        bootstrap=10,
        overrides=flags,
    )
    assert [p["val_loss"] for p in again["points"]] == [p["val_loss"] for p in first["points"]]
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("*/artifacts/checkpoints/*/meta.json")}
