"""The command line as a user runs it: subprocesses, exit codes, one-line errors, run directories."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import small_train_args

BIN = Path(sys.executable).parent


def run(*args, cwd=None, env=None, timeout=300):
    cmd = [str(BIN / args[0]), *args[1:]] if (BIN / args[0]).exists() else [sys.executable, "-m", "lmlab", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout
    )


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from lmlab.cli.app import cli; import lmlab; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    out = run("lmlab", "--help")  # fast because it imports no torch (checked above), not timed here
    assert out.returncode == 0 and "train" in out.stdout and "generate" in out.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--attn", "Linformer", "--layers", "2"],
            "unknown attention 'Linformer'; known: mha, mla, native_sparse, native_sparse_reference, sdpa",
        ),
        (
            ["--preset", "nope"],
            "unknown preset 'nope'; known: deepseek, gpt2, hybrid, llama, mistral, mpt, seq2seq, team, tiny",
        ),
        (
            ["--ffn", "swishglu"],
            "unknown feed-forward 'swishglu'; known: gated_mlp, geglu, mlp, moe, swiglu; did you mean 'swiglu'?",
        ),
        (
            ["--model.n_layr", "2"],
            "No such option '--model.n_layr'. (Did you mean one of: '--model.n_enc_layer', '--model.n_head', '--model.n_layer'",
        ),
        (["--dim", "130", "--heads", "4"], "model.d_model: 130 is not divisible by n_head=4"),
        (
            ["--heads", "4", "--n-kv-head", "3"],
            "model.n_kv_head: n_head=4 is not divisible by n_kv_head=3; allowed: 1, 2, 4",
        ),
        (["--lr", "-1"], "train.lr: Input should be greater than 0"),
        (["--data", "file:/definitely/missing.txt"], "data: file not found: /definitely/missing.txt"),
        (["--norm-position", "middle"], "model.norm_position: Input should be 'pre' or 'post'"),
        (["--nodes", "2"], "train --nodes 2: needs --launcher slurm (or submitit-local); on nodes you start yourself"),
        (["--launcher", "slurm"], "train --launcher slurm: "),  # no srun on this machine (or no [cluster] extra)
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    out = run("exp-train", *args, "--save-dir", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    if "No such option" not in needle:  # click's usage errors add a usage line
        assert out.stderr.strip().count("\n") == 0


def test_the_launcher_forwards_every_argument_but_its_own():
    from lmlab.cli.app import _launch_argv

    argv = ["lmlab", "train", "cfg.py", "--nodes", "4", "--lr", "1e-3", "--launcher=slurm", "--detach", "--seed", "2"]
    assert _launch_argv([*argv, "--slurm.time", "60", "--nproc-per-node", "8"]) == [
        "cfg.py",
        "--lr",
        "1e-3",
        "--seed",
        "2",
    ]
    assert _launch_argv(["exp-train", "--nodes", "2", "--lr", "1e-3"]) == ["--lr", "1e-3"]


def test_typo_in_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  n_layr: 3\n")
    out = run("lmlab", "train", "--config", str(cfg))
    assert out.returncode == 2 and "model.n_layr: unknown field; did you mean 'n_layer'?" in out.stderr


@pytest.mark.slow
def test_seed_style_command_then_eval_generate_and_arch(tmp_path):
    save = tmp_path / "x"
    out = run(
        "exp-train",
        "--attn",
        "sdpa",
        "--ffn",
        "swiglu",
        "--layers",
        "2",
        "--batch",
        "8",
        "--seq-len",
        "64",
        "--max-steps",
        "20",
        "--save-dir",
        str(save),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    (run_dir,) = save.iterdir()
    assert (run_dir / "artifacts/checkpoints/step_00000020/model.safetensors").is_file()
    cfg = json.loads((run_dir / "meta/full_config.json").read_text())
    assert cfg["model"]["attn"] == "sdpa" and cfg["model"]["n_layer"] == 2 and cfg["train"]["batch_size"] == 8
    for name in ("git.txt", "env.txt", "notes.md", "data.json"):
        assert (run_dir / "meta" / name).is_file()
    lines = [json.loads(x) for x in (run_dir / "logs/metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["split"] == "val" and lines[-1]["step"] == 20
    assert "sample 1" in out.stdout

    ev = run("exp-eval", "--run", str(run_dir), "--iters", "3")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["val_loss"] > 0 and (run_dir / "eval/eval.json").is_file()

    gen = run(
        "lmlab", "generate", "--run", str(run_dir), "--prompt", "def ", "--max-new-tokens", "30", "--temperature", "0"
    )
    assert gen.returncode == 0 and gen.stdout.startswith("def ") and len(gen.stdout) >= 30

    arch = run("lmlab", "arch", "--preset", "llama", "--layers", "2")
    assert arch.returncode == 0 and "2L-8H-512D-RoPE-RMS-SwiGLU-PreNorm" in arch.stdout

    missing = run("lmlab", "eval", "--run", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(tmp_path, corpus_file):
    common = [
        *small_train_args(corpus_file, dim=64, batch=8, train__ckpt_interval=5, train__eval_iters=2),
        "--save-dir",
        str(tmp_path),
        "--run-tag",
        "k",
    ]
    cmd = [str(BIN / "lmlab"), "train", *common, "--max-steps", "100000", "--progress", "--train.log_interval", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # step 11 is reported after the checkpoints of steps 5 and 10 are written
        if line.startswith("step 11/"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert len(list(tmp_path.glob("*_k/artifacts/checkpoints/step_*"))) >= 2
    (run_dir,) = tmp_path.glob("*_k")
    last_step = max(int(p.name[5:]) for p in (run_dir / "artifacts/checkpoints").glob("step_*"))
    out = run("lmlab", "train", *common, "--max-steps", str(last_step + 5), "--train.resume", "auto")
    assert out.returncode == 0, out.stderr
    assert len(list(tmp_path.glob("*_k"))) == 1  # continued in the same run directory
    steps = [json.loads(x)["step"] for x in (run_dir / "logs/metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == last_step + 5

    bad = run("lmlab", "train", *common, "--max-steps", "5", "--train.resume", str(run_dir), "--layers", "3")
    assert bad.returncode == 2 and "different architecture: model.n_layer (2 in run, 3 now)" in bad.stderr
    other = run("lmlab", "train", *common, "--max-steps", "5", "--train.resume", str(run_dir), "--optim", "muon")
    assert other.returncode == 2 and "trained with train.optim=adamw, not muon" in other.stderr


@pytest.mark.slow
def test_mla_seed_command_runs_as_written(tmp_path):
    out = run(
        "exp-train",
        "--attn",
        "MLA",
        "--ffn",
        "SwiGLU",
        "--layers",
        "6",
        "--batch",
        "128",
        "--seq-len",
        "256",
        "--epochs",
        "3",
        "--save-dir",
        "ckpt/mla_demo",
        "--max-steps",
        "1",
        "--train.eval_iters",  # the command as written, one step, with a short evaluation and sample
        "1",
        "--train.sample_tokens",
        "8",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    (run_dir,) = (tmp_path / "ckpt/mla_demo").iterdir()
    assert (run_dir / "artifacts/checkpoints/step_00000001/model.safetensors").is_file()
    assert json.loads((run_dir / "meta/full_config.json").read_text())["model"]["attn"] == "mla"


def test_compare_command(tmp_path):
    from tests.track.test_tracking import _synthetic_run

    a = _synthetic_run(tmp_path, "a", 4, 32, 64, [(10, 3.0), (20, 2.5)])
    b = _synthetic_run(tmp_path, "b", 8, 32, 64, [(10, 2.8), (20, 2.4)])
    out = run("lmlab", "compare", "--latest", "2", "--root", str(tmp_path), "--out", str(tmp_path / "cmp"))
    assert out.returncode == 0, out.stderr
    assert "runs ranked by best validation loss" in out.stdout and (tmp_path / "cmp/report.html").is_file()
    assert out.stdout.index(b.name) < out.stdout.index(a.name)  # b ranks first
    d = run("lmlab", "compare", str(a), str(b), "--diff")
    assert d.returncode == 0 and "model.d_model" not in d.stdout and "train.batch_size" in d.stdout
    none = run("lmlab", "compare")
    assert none.returncode == 2 and "no runs given" in none.stderr


def test_one_spelling_per_concept_and_one_device_default():
    from click.testing import CliRunner

    from lmlab.cli.app import cli

    for command in ("train", "eval", "generate"):
        text = CliRunner().invoke(cli, [command, "--help"]).output
        assert "--batch-size" in text and "--batch" in text, command
    for command in ("eval", "generate", "translate", "serve"):
        text = CliRunner().invoke(cli, [command, "--help"]).output
        assert "default: auto" in text.split("--device")[1].split("\n  -")[0], command


def test_command_settings_are_schema_sections(monkeypatch):
    """eval/generate/translate/serve/export flags come from their schema sections and validate like train's."""
    from click.testing import CliRunner

    from lmlab.cli.app import cli
    from lmlab.cli.schema_flags import collect_overrides, schema_options
    from lmlab.command_config import COMMAND_SECTIONS, command_settings

    for section, cls in COMMAND_SECTIONS.items():
        dests = {opt.name for opt in schema_options((section,))}
        assert {f"{section}__{name}" for name in cls.model_fields} <= dests, section
    bad = CliRunner().invoke(cli, ["generate", "--run", "nowhere", "--temperature", "-1"])
    assert bad.exit_code == 2 and "sample.temperature" in bad.output and "greater than or equal to 0" in bad.output
    bad = CliRunner().invoke(cli, ["export", "--run", "nowhere", "--format", "onnx"])
    assert bad.exit_code == 2 and "export.format" in bad.output and "'hf'" in bad.output
    monkeypatch.setenv("LMLAB_SERVE__PORT", "9001")
    assert command_settings("serve", {}).port == 9001
    assert command_settings("serve", {"port": "9002"}).port == 9002  # a flag beats the environment
    train = {opt.name: opt for opt in schema_options(("model", "train")) if not opt.hidden}
    assert "--seq-len" in train["train__seq_len"].opts and "--context" in train["model__max_seq_len"].opts
    args = ["--seq-len", "64"]
    ctx = cli.commands["train"].make_context("train", args)
    assert collect_overrides(ctx.params) == {"train": {"seq_len": "64"}}


def test_rough_edges(monkeypatch):
    """Help lists block names; env errors name the variable; --vocab-size trains; a busy port fails in one line."""
    import socket

    from click.testing import CliRunner

    from lmlab.cli.app import cli
    from lmlab.cli.schema_flags import collect_overrides
    from lmlab.config import resolve_config
    from lmlab.errors import ConfigError
    from lmlab.infer.server import check_port

    text = CliRunner().invoke(cli, ["train", "--help"]).output
    for flag, name in (("--attn", "native_sparse"), ("--ffn", "swiglu"), ("--norm", "rmsnorm"), ("--pos", "alibi")):
        assert "registered:" in text.split(f"\n  {flag},")[1].split("\n  --")[0] and name in text, flag
    with pytest.raises(ConfigError, match=r"model.n_layer \(from environment variable LMLAB_MODEL__N_LAYER\)"):
        resolve_config(environ={"LMLAB_MODEL__N_LAYER": "abc"})
    with pytest.raises(ConfigError, match=r"^train.lr: Input should be greater than 0"):  # a flag's value: no env
        resolve_config(cli={"train": {"lr": "-1"}}, environ={"LMLAB_TRAIN__LR": "-2"})
    ctx = cli.commands["train"].make_context("train", ["--vocab-size", "512"])
    assert collect_overrides(ctx.params) == {"data": {"vocab_size": "512"}}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"serve: cannot listen on 127.0.0.1:{port}"):
            check_port("127.0.0.1", port)
