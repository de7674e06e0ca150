"""Config files as other projects lay them out: nanoGPT's Python configs, a folder of per-section files,
a legacy flat config.json; every file given is kept verbatim in the run."""

import json
import shlex

import pytest
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.cli.schema_flags import collect_overrides
from lmlab.config import resolve_config
from lmlab.errors import ConfigError
from lmlab.runs.run_dir import RunDir
from tests.helpers import small_train_args

NANOGPT_CONFIG = """
# train a miniature character-level model
out_dir = 'out-tiny'
eval_interval = 250
eval_iters = 20
batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
warmup_iters = 100
gradient_accumulation_steps = 1
"""


PY_COMMAND = "lmlab train config/my_config.py --max_iters=100"
DIR_COMMAND = "lmlab train --config-dir configs/"


def _train_config(command: str, cwd):
    """What `lmlab train ...` resolves to, run in `cwd` (nothing is trained)."""
    args = shlex.split(command)[2:]
    ctx = cli.commands["train"].make_context("train", args)
    params = dict(ctx.params)
    flag, positional = params.pop("config"), params.pop("config_path")
    return resolve_config(
        config_file=flag or positional,
        config_dir=params.pop("config_dir"),
        cli=collect_overrides(params),
        environ={},
    )


def test_nanogpt_python_config_then_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "my_config.py").write_text(NANOGPT_CONFIG)
    cfg = _train_config(PY_COMMAND, tmp_path)
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.max_seq_len, cfg.model.dropout) == (4, 128, 64, 0.0)
    assert (cfg.train.max_steps, cfg.train.decay_steps, cfg.train.lr, cfg.train.save_dir) == (
        100,
        5000,
        1e-3,
        "out-tiny",
    )
    (tmp_path / "config" / "bad.py").write_text("wandb_log = False\n")
    with pytest.raises(ConfigError, match=r"^wandb_log: unknown name in config/bad.py"):
        _train_config("lmlab train config/bad.py", tmp_path)
    (tmp_path / "config" / "code.py").write_text("import os\nn_layer = int(os.environ['N'])\n")
    with pytest.raises(ConfigError, match="line 1: only NAME = value assignments are read"):
        _train_config("lmlab train config/code.py", tmp_path)


def _config_folder(root):
    folder = root / "configs"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"n_layer": 2, "n_embd": 32, "learning_rate": 3e-3, "n_head": 2}))
    (folder / "model.json").write_text(json.dumps({"num_heads": 4, "max_seq_len": 32}))
    (folder / "train.yaml").write_text("batch_size: 4\nmax_steps: 3\n")
    (folder / "data.yaml").write_text("tokenizer_type: char\n")
    (folder / "tensorboard.json").write_text(json.dumps({"enabled": True}))
    return folder


def test_a_config_folder_routes_each_file_and_flat_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _config_folder(tmp_path)
    cfg = _train_config(DIR_COMMAND, tmp_path)
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.max_seq_len) == (2, 32, 4, 32)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.max_steps) == (3e-3, 4, 3)
    assert "tensorboard" in cfg.track.trackers and cfg.data.tokenizer == "char"
    (tmp_path / "configs" / "model.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config: cannot parse configs/model.json"):
        _train_config(DIR_COMMAND, tmp_path)
    (tmp_path / "configs" / "model.json").write_text(json.dumps({"num_heads": 4, "max_seq_len": 32}))
    (tmp_path / "configs" / "config.json").write_text(json.dumps({"vocab_size": 512}))
    with pytest.raises(ConfigError, match=r"vocab_size: .* could be model.vocab_size or data.vocab_size"):
        _train_config("lmlab train --config-dir configs/", tmp_path)


def test_every_config_file_is_kept_verbatim_in_the_run(tmp_path, corpus_file):
    folder = _config_folder(tmp_path)
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  eval_iters: 1  # one batch\n")
    args = small_train_args(corpus_file, layers=1, dim=16, heads=2, seq_len=16, save_dir=tmp_path / "runs")
    result = CliRunner().invoke(cli, ["train", "--config-dir", str(folder), "--config", str(extra), *args])
    assert result.exit_code == 0, result.output
    kept = RunDir.latest(tmp_path / "runs").meta / "config_files"
    names = sorted(p.name for p in kept.iterdir())
    assert names == [
        "00_config.json",
        "01_model.json",
        "02_data.yaml",
        "03_train.yaml",
        "04_tensorboard.json",
        "05_extra.yaml",
    ]
    assert (kept / "05_extra.yaml").read_text() == extra.read_text()  # verbatim, comment and all
    more = tmp_path / "more.yaml"
    more.write_text("train:\n  max_steps: 4  # one more step\n")
    run = RunDir.latest(tmp_path / "runs")
    result = CliRunner().invoke(
        cli, ["train", "--config-dir", str(folder), "--config", str(more), *args, "--train.resume", str(run.path)]
    )
    assert result.exit_code == 0, result.output
    resumed = sorted(p.name for p in (kept / "resume_01").iterdir())  # a resume keeps the files it was given
    assert resumed[-1] == "05_more.yaml" and (kept / "resume_01" / "05_more.yaml").read_text() == more.read_text()


LLM_COMMAND = "lmlab train --config llm.yaml"
LLM_STYLE = """
model:
  hidden_size: 64
  num_layers: 2
  num_heads: 4
  max_seq_len: 32
  attn_impl: flash
  mlp_impl: swiglu
data:
  dataset_path: data/input.txt
  tokenizer_type: char
train:
  use_compile: false
  use_amp: false
"""


def test_llm_style_field_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("hello world\n" * 50)
    (tmp_path / "llm.yaml").write_text(LLM_STYLE)
    cfg = _train_config(LLM_COMMAND, tmp_path)
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.model.n_head, cfg.model.max_seq_len) == (64, 2, 4, 32)
    assert (cfg.model.attn, cfg.model.ffn, cfg.data.name, cfg.data.tokenizer) == (
        "sdpa",
        "swiglu",
        "file:data/input.txt",
        "char",
    )
    assert (cfg.train.compile, cfg.train.precision) == (False, "fp32")  # use_amp off = full precision
    on = _train_config(f"{LLM_COMMAND} --use_amp true", tmp_path)
    assert on.train.precision == "auto"
