"""`lmlab board`: the viewer command for a save_dir's shared Aim repo and TensorBoard root."""

from click.testing import CliRunner

from lmlab.cli.app import cli
from lmlab.track.layout import aim_repo, tensorboard_dir


def _board(*args):
    return CliRunner().invoke(cli, ["board", *args])


def test_board_names_the_viewer_for_the_shared_layout(tmp_path):
    (tmp_path / "tb" / "2026-01-01_001").mkdir(parents=True)
    (tmp_path / ".aim").mkdir()
    (tmp_path / "2026-01-01_001" / "meta").mkdir(parents=True)
    root = str(tmp_path)
    assert _board(root, "--print").output.strip() == f"tensorboard --logdir {tmp_path / 'tb'}"
    assert _board(root, "--aim", "--print", "--port", "43800").output.strip() == f"aim up --repo {root} --port 43800"
    run = str(tmp_path / "2026-01-01_001")  # a run directory opens its save_dir's shared files
    assert _board(run, "--tensorboard", "--print").output.strip() == f"tensorboard --logdir {tmp_path / 'tb'}"


def test_board_without_data_or_viewer_says_what_to_do(tmp_path, monkeypatch):
    result = _board(str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "does not exist" in result.output
    result = _board(str(tmp_path), "--aim")
    assert result.exit_code == 2 and "no aim data under" in result.output and "--track.trackers aim" in result.output
    (tmp_path / "tb").mkdir()
    monkeypatch.setattr("lmlab.track.board.find_viewer", lambda name: None)
    result = _board(str(tmp_path))
    assert result.exit_code == 0 and 'pip install "lmlab[track]"' in result.output
    assert result.output.strip().endswith(f"tensorboard --logdir {tmp_path / 'tb'}")


def test_per_run_layout_is_found_in_the_run(tmp_path):
    run = tmp_path / "r"
    (run / "logs" / "tensorboard").mkdir(parents=True)
    (run / "logs" / "aim" / ".aim").mkdir(parents=True)
    assert _board(str(run), "--print").output.strip() == f"tensorboard --logdir {run / 'logs' / 'tensorboard'}"
    assert _board(str(run), "--aim", "--print").output.strip() == f"aim up --repo {run / 'logs' / 'aim'}"
    assert (aim_repo(run, shared=False), tensorboard_dir(run, shared=False)) == (
        run / "logs" / "aim",
        run / "logs" / "tensorboard",
    )
    assert (aim_repo(run, shared=True), tensorboard_dir(run, shared=True)) == (tmp_path, tmp_path / "tb" / "r")
