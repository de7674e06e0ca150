"""Ctrl-C keeps the work, finished runs say so, weights load without optimizer state, files are 0644."""

import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.infer.load import load_run
from lmlab.runs import checkpoint as ckpt
from lmlab.runs.run_dir import RunDir
from tests.helpers import small_train_args

BIN = Path(sys.executable).parent


def test_first_ctrl_c_finishes_the_step_writes_a_checkpoint_and_prints_the_resume_command(tmp_path, corpus_file):
    args = [*small_train_args(corpus_file, max_steps=200, batch=4, train__log_interval=1), "--progress"]
    cmd = [str(BIN / "lmlab"), "train", *args, "--save-dir", str(tmp_path), "--run-tag", "c"]
    # A shell that starts jobs in the background hands them SIGINT ignored: give the run a terminal's default.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    for line in proc.stderr:
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGINT)
            break
    err = proc.stderr.read()
    proc.wait()
    assert proc.returncode == 130, err
    step = int(re.search(r"interrupted at step (\d+); checkpoint written", err).group(1))
    (run,) = tmp_path.glob("*_c")
    latest = ckpt.latest_valid(run / "artifacts/checkpoints")
    assert latest is not None and latest.name == f"step_{step:08d}"  # nothing since the last step is lost
    resume = err.strip().splitlines()[-1].strip()
    assert resume.startswith("lmlab train ") and resume.endswith(f"--train.resume {run}")
    again = shlex.split(resume)[1:]
    again[again.index("200")] = str(step + 2)  # --max-steps: two more steps are enough to prove it continues
    out = subprocess.run([str(BIN / "lmlab"), *again], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"done: step {step + 2}" in out.stdout


def test_resuming_a_finished_run_says_it_is_complete(tmp_path, corpus_file):
    args = ["train", *small_train_args(corpus_file, max_steps=3, batch=4), "--save-dir", str(tmp_path)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    run = RunDir.latest(tmp_path).path
    again = CliRunner().invoke(cli, [*args, "--train.resume", str(run)])
    assert again.exit_code == 0, again.output
    assert f"already complete: {run} finished at step 3 (val loss " in again.output
    assert "nan" not in again.output and "None" not in again.output


def test_weights_load_without_optimizer_state_and_files_are_world_readable(tmp_path, corpus_file):
    args = ["train", *small_train_args(corpus_file, max_steps=2, batch=4), "--save-dir", str(tmp_path)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    run = RunDir.latest(tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    for path in [run.export / "model.safetensors", *run.checkpoints.glob("*/model.safetensors")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    (run.export / "model.safetensors").unlink()  # a run with checkpoints but no final export ...
    for state in run.checkpoints.glob("*/state.pt"):
        state.unlink()  # ... and no optimizer state
    loaded = load_run(run.path)
    assert loaded.weights.parent.name.startswith("step_")
    out = CliRunner().invoke(cli, ["generate", "--run", str(run.path), "--prompt", "the", "--max-new-tokens", "3"])
    assert out.exit_code == 0, out.output
