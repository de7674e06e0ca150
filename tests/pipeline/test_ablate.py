import json

import pytest

from lmlab.config import ModelConfig
from lmlab.errors import ConfigError
from lmlab.model.cost import params_by_component
from lmlab.model.flops import flops_per_token
from lmlab.pipeline.ablate import match_width, parse_swaps, run_ablation, swap_overrides


def test_parse_swaps():
    names = [v.name for v in parse_swaps(["pos=rope", "norm=rmsnorm"])]
    assert names == ["base", "pos=rope", "norm=rmsnorm", "all"]
    assert parse_swaps(["ffn=swiglu"])[-1].swaps == {"ffn": "swiglu"}
    with pytest.raises(ConfigError, match="not field=value"):
        parse_swaps(["rope"])


def test_a_swap_may_set_several_fields_of_any_section_and_one_field_twice_never_combines():
    variants = parse_swaps(["optim=lion+lr=4e-4+min_lr=1e+3", "optim=muon"])
    assert [v.name for v in variants] == ["base", "optim=lion+lr=4e-4+min_lr=1e+3", "optim=muon"]  # no "all"
    assert variants[1].swaps == {"optim": "lion", "lr": "4e-4", "min_lr": "1e+3"}  # `+` inside 1e+3 stays
    assert swap_overrides({"pos": "rope", "optim": "muon", "train.muon.lr": "0.01"}) == {
        "model": {"pos": "rope"},
        "train": {"optim": "muon", "muon": {"lr": "0.01"}},
    }
    assert [v.name for v in parse_swaps(["pos=rope", "optim=muon"])][-1] == "all"


@pytest.mark.parametrize("match", ["params", "flops"])
def test_match_width_hits_the_base_budget(match):
    base = ModelConfig.from_preset("gpt2", n_layer=2, d_model=64, n_head=4, vocab_size=100, max_seq_len=64)
    variant = base.model_copy(update={"ffn": "swiglu", "d_ff": 256})
    matched = match_width(base, variant, match, 64)
    cost = (lambda c: sum(params_by_component(c).values())) if match == "params" else (lambda c: flops_per_token(c, 64))
    assert matched.d_ff % 8 == 0 and matched.d_ff != 256
    per_width = abs(cost(matched.model_copy(update={"d_ff": matched.d_ff + 8})) - cost(matched))
    assert abs(cost(matched) - cost(base)) <= per_width / 2 + 1  # the nearest multiple of 8


def _small(corpus_file, *, max_steps: int, eval_iters: int) -> dict:
    """A one-layer, 32-wide study on the test corpus."""
    return {
        "data": {"name": f"file:{corpus_file}"},
        "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "max_seq_len": 32},
        "train": {"max_steps": max_steps, "eval_iters": eval_iters, "batch_size": 4},
    }


def test_ablation_end_to_end_small(tmp_path, corpus_file, capsys):
    report = run_ablation(
        "gpt2",
        ["pos=rope", "norm=rmsnorm"],
        seeds=2,
        save_dir=tmp_path,
        overrides=_small(corpus_file, max_steps=8, eval_iters=2),
    )
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["base", "pos=rope", "norm=rmsnorm", "all"]
    said = capsys.readouterr().err.splitlines()  # a line as each of the 8 runs starts and as it ends
    assert said[0] == "[1/8] ablate base seed 0: training on this process" and len(said) == 16
    assert said[-1].startswith("[8/8] ablate all seed 1: val ") and said[-1].endswith(" s; 0 to go")
    assert rows["all"]["arch"] == "1L-2H-32D-RoPE-RMS-GELU-PreNorm"
    assert all(len(r["losses"]) == 2 and r["ci95"] > 0 for r in rows.values())
    from lmlab.track.jsonl import read_metrics

    first = rows["base"]["runs"][0]
    evals = [r["step"] for r in read_metrics(f"{first}/logs/metrics.jsonl") if r["split"] == "val"]
    assert evals == [1, 2, 3, 4, 5, 6, 7, 8]  # max_steps // 10 -> every step for an 8-step study
    assert rows["pos=rope"]["diff_vs_base"] == pytest.approx(rows["pos=rope"]["mean"] - rows["base"]["mean"])
    assert 0 <= rows["pos=rope"]["p"] <= 1
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["rows"][0]["runs"] and (tmp_path / "ablation.md").read_text().count("\n| ") == 6


def test_ablation_refuses_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        run_ablation("gpt2", ["pos=rope"], seeds=1, save_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown position 'ropee'"):
        run_ablation("gpt2", ["pos=ropee"], seeds=2, save_dir=tmp_path)


def test_an_optimizer_is_ablated_like_a_block_with_its_time_per_step(tmp_path, corpus_file):
    report = run_ablation(
        "tiny",
        ["optim=muon+train.muon.lr=0.01"],
        seeds=2,
        save_dir=tmp_path,
        overrides=_small(corpus_file, max_steps=4, eval_iters=1),
    )
    from lmlab.runs.run_dir import RunDir

    base, muon = report["rows"]
    assert [RunDir.open(r).config().train.optim for r in base["runs"] + muon["runs"]] == ["adamw"] * 2 + ["muon"] * 2
    assert RunDir.open(muon["runs"][0]).config().train.muon.lr == 0.01
    assert base["ms_per_step"] > 0 and muon["ms_per_step"] > 0 and muon["mean"] != base["mean"]
    assert "| ms/step |" in (tmp_path / "ablation.md").read_text()
