"""The study runner: parallel jobs give the serial study's numbers, a killed study finishes without
retraining what was done, a changed plan is refused, and the submitit paths (its local executor run end
to end, the sbatch script it writes for SLURM)."""

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlab.errors import ConfigError
from lmlab.pipeline.ablate import run_ablation
from lmlab.pipeline.study import Placement, Study, plan_diff
from tests.helpers import small_train_args

pytestmark = pytest.mark.xdist_group("study")

TEXT = "\n".join(f"line {i} of a small corpus where the quick brown fox jumps over dog {i % 7}." for i in range(400))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study") / "corpus.txt"
    path.write_text(TEXT)
    return path


def _ablate_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    args = ["ablate", "--base", "gpt2", "--swap", "pos=rope", "--seeds", "2", "--out", str(out)]
    args += small_train_args(corpus, layers=1, max_steps=6, train__eval_iters=2, batch=4)
    args += ["--train.ckpt_interval", "2", *extra]
    return [sys.executable, "-m", "lmlab", *args]


def _numbers(out: Path) -> list[tuple]:
    """The report without where the runs went: every variant's losses, mean and CI."""
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    return [(r["variant"], r["losses"], r["mean"], r["ci95"]) for r in rows]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # the serial study's runs on one thread, as each parallel job


@pytest.fixture(scope="module")
def serial(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "ablate"
    done = subprocess.run(_ablate_args(corpus, out), capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_two_jobs_report_the_serial_studys_numbers_bit_for_bit(serial, corpus, tmp_path):
    out = tmp_path / "parallel"
    args = _ablate_args(corpus, out, "-j", "2", "--threads-per-job", "1")
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _numbers(out) == _numbers(serial)
    assert "training on cpu job 1 (1 thread)" in done.stderr  # two slots were used


def test_study_status_lists_every_run_and_its_state(serial):
    done = subprocess.run(
        [sys.executable, "-m", "lmlab", "study", "status", str(serial)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("complete") == 4 + 1 and "4/4 complete" in done.stdout


def _files(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*") if p.is_file()}


def test_a_study_killed_after_a_completed_run_finishes_without_retraining_it(serial, corpus, tmp_path):
    out = tmp_path / "killed"
    k = random.Random().randint(1, 3)  # killed after the k-th of 4 runs is marked complete
    log = tmp_path / "stderr.txt"  # a file, not a pipe nobody reads while the study runs (it could fill and block)
    with log.open("w") as err:
        proc = subprocess.Popen(_ablate_args(corpus, out), stdout=subprocess.DEVNULL, stderr=err, env=_env())
    results = out / "study"
    while len(list(results.glob("*-s[01].json"))) < k:
        if proc.poll() is not None and len(list(results.glob("*-s[01].json"))) < k:
            pytest.fail(f"the study ended before run {k} completed: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [json.loads(p.read_text())["run"] for p in results.glob("*-s[01].json")]
    before = {run: _files(Path(run)) for run in finished}
    again = subprocess.run(_ablate_args(corpus, out), capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("complete before, not trained again") == len(finished) >= k
    assert {run: _files(Path(run)) for run in finished} == before  # not one file of a finished run touched
    assert _numbers(out) == _numbers(serial)


def test_a_changed_plan_is_refused_with_what_differs(serial, corpus):
    args = [a if a != "6" else "7" for a in _ablate_args(corpus, serial)]  # --max-steps 7
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 2
    assert "holds a different ablate plan (train.max_steps: 6 -> 7 (in 4 runs))" in done.stderr


def test_plan_diff_names_fields_once_and_counts_runs():
    before = {"spec": {"seeds": 2}, "runs": [{"key": "a", "config": {"train": {"lr": 1}}}] * 2}
    now = {"spec": {"seeds": 3}, "runs": [{"key": "a", "config": {"train": {"lr": 2}}}] * 3}
    assert plan_diff(before, now) == ["runs: 2 -> 3 entries", "spec.seeds: 2 -> 3"]
    assert plan_diff(before, before) == []


def _fake_train(cfg, quiet=True):
    """A stand-in run: a run directory with a config, and a loss from the seed."""
    from types import SimpleNamespace

    from lmlab.runs.run_dir import RunDir

    run = RunDir.create(cfg.train.save_dir, cfg.train.run_tag)
    run.write_meta(cfg, {})
    return SimpleNamespace(metrics={"val_loss": 1.0 + cfg.train.seed % 7, "wall": 1.0}, run=run)


def test_submitits_local_executor_runs_a_two_run_study_end_to_end(corpus, tmp_path):
    pytest.importorskip("submitit")
    overrides = {
        "data": {"name": f"file:{corpus}"},
        "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "max_seq_len": 32},
        "train": {"max_steps": 2, "eval_iters": 1, "batch_size": 4},
    }
    report = run_ablation(
        "gpt2", [], seeds=2, save_dir=tmp_path, overrides=overrides, placement=Placement(launcher="submitit-local")
    )
    (row,) = report["rows"]
    assert len(row["losses"]) == 2 and all(Path(r, "meta", "full_config.json").is_file() for r in row["runs"])
    jobs = sorted((tmp_path / "study").glob("*.job"))
    assert [j.name for j in jobs] == ["base-s0.job", "base-s1.job"]  # each run one job
    assert (tmp_path / "study" / "submitit").is_dir()


def test_the_slurm_launcher_writes_the_sbatch_script_the_flags_ask_for(tmp_path, monkeypatch):
    """A stand-in `sbatch` keeps the script submitit hands it; the study detaches, so no cluster is needed."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\n")  # submitit looks for it to know it is on a cluster
    for tool in (sbatch, bin_dir / "srun"):
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm = {"partition": "dev", "gpus_per_node": 1, "time": 30, "account": "lab", "array_parallelism": 1}
    placement = Placement(jobs=2, launcher="slurm", slurm={**slurm, "detach": True})
    overrides = {"train": {"max_steps": 2}}
    from lmlab.pipeline.study import StudyPending

    with pytest.raises(StudyPending, match="run the same command again"):
        run_ablation("tiny", [], seeds=2, save_dir=tmp_path / "out", overrides=overrides, placement=placement)
    script = (tmp_path / "submitted.sh").read_text()
    for line in (
        "#SBATCH --partition=dev",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=30",
        "#SBATCH --account=lab",
        "#SBATCH --array=0-1%1",
        "submitit.core._submit",
    ):
        assert line in script, line
    assert (tmp_path / "out" / "study" / "base-s0.job").read_text().startswith("4242")


def test_a_study_with_runs_already_complete_trains_only_the_rest(tmp_path):
    calls = []

    def train(cfg, quiet=True):
        calls.append(cfg.train.run_tag)
        return _fake_train(cfg)

    overrides = {"train": {"max_steps": 2}}
    run_ablation("tiny", ["pos=rope"], seeds=2, save_dir=tmp_path, overrides=overrides, train_fn=train)
    (tmp_path / "study" / "pos-rope-s1.json").unlink()  # as if killed before it was marked complete
    calls.clear()
    run_ablation("tiny", ["pos=rope"], seeds=2, save_dir=tmp_path, overrides=overrides, train_fn=train)
    assert calls == ["pos-rope-s1"]
    with pytest.raises(ConfigError, match=r"seeds: 2 -> 3"):
        run_ablation("tiny", ["pos=rope"], seeds=3, save_dir=tmp_path, overrides=overrides, train_fn=train)
    assert Study(tmp_path, "", {}).run_state("base-s0") == "complete"
