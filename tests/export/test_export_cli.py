"""`lmlab export` (safetensors and transformers, parity-checked) and `lmlab generate --stream`."""

import json

import pytest
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.runs.run_dir import RunDir
from tests.helpers import small_train_args

pytest.importorskip("transformers")


def _run(tmp_path, corpus_file, *extra):
    args = ["train", *small_train_args(corpus_file, layers=2, max_steps=4, batch=4, save_dir=tmp_path / "runs"), *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return RunDir.latest(tmp_path / "runs")


# GPT-2 and Llama family exports: tests/export/test_hf_tokenizer.py (with their tokenizers).


def test_mla_exports_as_remote_code_that_transformers_loads_without_lmlab(tmp_path, corpus_file):
    run = _run(tmp_path, corpus_file, "--attn", "mla", "--pos", "rope", "--norm", "rmsnorm", "--ffn", "swiglu")
    out = tmp_path / "hf_mla"
    result = CliRunner().invoke(cli, ["export", "--run", str(run.path), "--format", "hf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # Parity is checked in a process where lmlab is unimportable.
    assert float(result.output.split("max |diff|")[1].split()[0]) <= 1e-4
    assert "trust_remote_code=True" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_lmlab.LmlabForCausalLM"
    assert (out / "modeling_lmlab.py").is_file() and (out / "model.safetensors").is_file()


def test_safetensors_export_and_unmappable_architecture(tmp_path, corpus_file):
    run = _run(tmp_path, corpus_file, "--attn", "nsa", "--pos", "rope")
    ok = CliRunner().invoke(cli, ["export", "--run", str(run.path), "--format", "safetensors"])
    assert ok.exit_code == 0 and "max |diff| 0.00e+00" in ok.output, ok.output
    assert (run.path / "artifacts" / "export_safetensors" / "tokenizer.json").is_file()
    bad = CliRunner().invoke(cli, ["export", "--run", str(run.path), "--format", "hf"])
    assert bad.exit_code == 2 and "model.attn='native_sparse'" in bad.output and "--format safetensors" in bad.output


def test_generate_stream_prints_the_same_text(tmp_path, corpus_file):
    run = _run(tmp_path, corpus_file)
    base = ["generate", "--run", str(run.path), "--prompt", "the ", "--max-new-tokens", "20", "--temperature", "0.8"]
    plain = CliRunner().invoke(cli, base)
    streamed = CliRunner().invoke(cli, [*base, "--stream"])
    assert plain.exit_code == 0 and streamed.exit_code == 0
    assert plain.output == streamed.output and plain.output.startswith("the ")


def test_generate_batches_prompts_and_each_equals_its_own_run(tmp_path, corpus_file):
    run = _run(tmp_path, corpus_file)
    base = ["generate", "--run", str(run.path), "--max-new-tokens", "15", "--temperature", "0.8", "--seed", "7"]
    batched = CliRunner().invoke(cli, [*base, "--prompt", "the quick ", "--prompt", "a", "--num-samples", "2"])
    assert batched.exit_code == 0, batched.output
    for prompt in ("the quick ", "a"):
        alone = CliRunner().invoke(cli, [*base, "--prompt", prompt, "--num-samples", "2"])
        for k in (1, 2):
            text = alone.output.split(f"--- sample {k} ---\n")[1].split("--- sample")[0]
            assert text in batched.output, (prompt, k)
    assert batched.output.count("--- prompt ") == 4
