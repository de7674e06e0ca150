"""One writer per run directory: a live holder refuses others in one line, a gone one is taken over."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.errors import RunLockedError
from lmlab.runs import lock as run_lock
from lmlab.runs.lock import RunLock
from tests.helpers import small_train_args


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped (the kernel does not reuse it at once)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_record(folder: Path, **fields) -> dict:
    record = {"pid": 1, "host": socket.gethostname(), "since": time.time(), "heartbeat": time.time(), "action": "train"}
    record.update(fields)
    (folder / run_lock.NAME).write_text(json.dumps(record))
    return record


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def test_a_second_holder_is_refused_naming_the_first_and_a_release_frees_it(tmp_path):
    first = RunLock(tmp_path, heartbeat=1e9).acquire()
    with pytest.raises(RunLockedError) as refused:
        RunLock(tmp_path).acquire("export")
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"export: {tmp_path} is held by lmlab train, pid {os.getpid()}@")
    assert socket.gethostname() in line and "since" in line and "then retry" in line
    first.release()
    assert not (tmp_path / run_lock.NAME).exists()
    with RunLock(tmp_path, heartbeat=1e9).acquire("export"):  # held once, whichever way it is entered
        assert run_lock.holder(tmp_path)["action"] == "export"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left behind


def test_a_lock_whose_pid_is_gone_on_this_host_is_taken_over_with_one_line(tmp_path, capsys):
    _write_record(tmp_path, pid=_dead_pid())
    with RunLock(tmp_path, heartbeat=1e9):
        assert run_lock.holder(tmp_path)["pid"] == os.getpid()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"train: taking over the lock of {tmp_path}" in err and "is not running on" in err


def test_a_reused_pid_is_not_the_holder(tmp_path):
    _write_record(tmp_path, pid=os.getpid(), start="1")  # this pid, but a process started at another time
    assert "is not running" in run_lock.stale_reason(run_lock.holder(tmp_path))


def test_another_hosts_lock_is_live_until_its_heartbeat_is_older_than_the_limit(tmp_path, capsys):
    record = _write_record(tmp_path, pid=123, host="node-7", heartbeat=time.time() - 100)
    with pytest.raises(RunLockedError, match=r"pid 123@node-7 since .* \(heartbeat 10\d s ago\)"):
        RunLock(tmp_path, stale_after=300).acquire()
    assert run_lock.holder(tmp_path) == record  # the refusal changed nothing
    with RunLock(tmp_path, stale_after=60, heartbeat=1e9):
        pass
    assert "its heartbeat is 10" in capsys.readouterr().err


def test_the_heartbeat_advances_and_stops_once_the_lock_is_taken_over(tmp_path):
    lock = RunLock(tmp_path, heartbeat=1e9).acquire()
    before = run_lock.holder(tmp_path)["heartbeat"]
    assert lock.beat() and run_lock.holder(tmp_path)["heartbeat"] >= before
    taken = _write_record(tmp_path, pid=_dead_pid(), host="elsewhere")  # another process took it over
    assert not lock.beat() and run_lock.holder(tmp_path) == taken  # not overwritten
    lock.release()
    assert run_lock.holder(tmp_path) == taken  # and not removed: it is not ours


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("locked")
    corpus = root / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    args = small_train_args(corpus, layers=1, dim=16, max_steps=2, batch=2, train__ckpt_interval=1)
    result = CliRunner().invoke(cli, ["train", *args, "--save-dir", str(root / "runs"), "--run-tag", "t"])
    assert result.exit_code == 0, result.output
    (run,) = (root / "runs").iterdir()
    return corpus, run, args


@pytest.mark.parametrize("resume", ["auto", "dir"])
def test_training_into_a_run_another_process_trains_is_refused_and_changes_nothing(finished_run, resume):
    _, run, args = finished_run
    before = _files(run)
    with RunLock(run, heartbeat=1e9):  # a live trainer: this process, on this host
        target = "auto" if resume == "auto" else str(run)
        again = [*args, "--max-steps", "4", "--save-dir", str(run.parent), "--run-tag", "t", "--train.resume", target]
        result = CliRunner().invoke(cli, ["train", *again])
        assert result.exit_code == 2
        (line,) = result.output.strip().splitlines()
        assert line.startswith(f"error: train: {run} is held by lmlab train, pid {os.getpid()}@")
        assert "wait for it to finish or stop it" in line
        exported = CliRunner().invoke(cli, ["export", "--run", str(run), "--format", "safetensors"])
        assert exported.exit_code == 2 and f"export: {run} is held by lmlab train" in exported.output
    assert _files(run) == before
    assert not (run / run_lock.NAME).exists()


def test_a_resume_takes_over_the_lock_of_a_killed_trainer(finished_run):
    _, run, args = finished_run
    _write_record(run, pid=_dead_pid())
    again = [*args, "--save-dir", str(run.parent), "--run-tag", "t", "--train.resume", "auto"]
    result = CliRunner().invoke(cli, ["train", *again])
    assert result.exit_code == 0, result.output
    assert f"taking over the lock of {run}" in result.output and "is not running on" in result.output
    assert not (run / run_lock.NAME).exists()  # released at the end


def test_a_study_folder_is_driven_by_one_process(tmp_path):
    from lmlab.pipeline.study import Study

    with RunLock(tmp_path, heartbeat=1e9), pytest.raises(RunLockedError, match=f"ablate: {tmp_path} is held by"):
        Study(tmp_path, "ablate", {}).run([])
