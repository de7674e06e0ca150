"""Commands as nanoGPT (and HF, llm-style) users type them, verbatim: each resolves to the config it means."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.cli.app import cli
from lmlab.cli.schema_flags import collect_overrides
from lmlab.config import resolve_config
from lmlab.errors import ConfigError
from tests.compat.test_config_folders import DIR_COMMAND, LLM_COMMAND, LLM_STYLE, PY_COMMAND
from tests.compat.test_reference_yaml import REFERENCE_COMMANDS, reference_yaml

PAGE = Path(__file__).resolve().parents[2] / "docs" / "coming-from-nanogpt.md"
NANOGPT = (
    "lmlab train --max_iters=2000 --n_layer=4 --n_embd=128 --block_size=64 --learning_rate=1e-3 "
    "--batch_size=12 --dropout=0.0"
)
DASHED = (
    "lmlab train --block-size 64 --max-iters 30 --learning-rate 3e-4 --n-embd 96 --n-head 3 --n-layer 2 "
    "--batch-size 8 --eval-interval 10 --eval-iters 5 --output /tmp/lmlab-out --position-encoding learned_absolute "
    "--normalization rms_norm --attn-impl flash --mlp-impl swiglu"
)
DATA = "lmlab train --data data/input.txt"


def test_the_page_shows_exactly_these_commands_and_its_python_runs(tmp_path):
    text = PAGE.read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.S)
    commands = [line for lang, body in blocks if lang == "bash" for line in body.splitlines() if line.strip()]
    assert commands == [NANOGPT, DASHED, DATA, PY_COMMAND, DIR_COMMAND, LLM_COMMAND, *REFERENCE_COMMANDS]
    assert [body for lang, body in blocks if lang == "yaml"] == [LLM_STYLE.lstrip(), reference_yaml()]
    (python,) = [body for lang, body in blocks if lang == "python"]
    env = {**os.environ, "LMLAB_CACHE_DIR": str(tmp_path)}  # the snippet's token cache
    subprocess.run([sys.executable, "-c", python], check=True, env=env)


def _config(command: str):
    """The validated config `lmlab train ...` would run with (nothing is trained)."""
    args = shlex.split(command)
    assert args[:2] == ["lmlab", "train"]
    ctx = cli.commands["train"].make_context("train", args[2:])
    return resolve_config(cli=collect_overrides(ctx.params), environ={})


def test_nanogpt_overrides_with_equals_and_underscores():
    cfg = _config(NANOGPT)
    m, t = cfg.model, cfg.train
    assert (m.n_layer, m.d_model, m.max_seq_len, m.dropout) == (4, 128, 64, 0.0)
    assert (t.max_steps, t.lr, t.batch_size) == (2000, 1e-3, 12)


def test_dashed_foreign_names_and_value_aliases():
    cfg = _config(DASHED)
    m, t = cfg.model, cfg.train
    assert (m.max_seq_len, m.d_model, m.n_head, m.n_layer) == (64, 96, 3, 2)
    assert (m.pos, m.norm, m.attn, m.ffn) == ("learned", "rmsnorm", "sdpa", "swiglu")
    assert (t.max_steps, t.lr, t.batch_size, t.eval_interval, t.eval_iters) == (30, 3e-4, 8, 10, 5)
    assert t.save_dir == "/tmp/lmlab-out"
    m = _config("lmlab train --attn MLA --norm layer_norm").model
    assert (m.attn, m.norm) == ("mla", "layernorm")
    assert _config("lmlab train --attn manual").model.attn == "mha"
    assert _config("lmlab train --model.n_embd 64").model.d_model == 64


def test_a_path_needs_no_prefix_and_an_unknown_name_says_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("hello world\n" * 50)
    assert _config(DATA).data.name == "file:data/input.txt"
    assert _config("lmlab train --data data").data.name == "dir:data"
    with pytest.raises(ConfigError, match=r"'nope' is neither a known corpus \(pystdlib, shakespeare, file:"):
        _config("lmlab train --data nope")
