"""Where the viewers' files go: by default every run under one save_dir shares them, so one viewer compares all.

    <save_dir>/.aim               one Aim repo for every run    (aim up --repo <save_dir>)
    <save_dir>/tb/<run-id>/       one TensorBoard folder a run  (tensorboard --logdir <save_dir>/tb)

With `track.shared: false` each run keeps its own, in its logs/ folder (logs/aim, logs/tensorboard).
"""

from __future__ import annotations

from pathlib import Path


def aim_repo(run_path: Path, shared: bool) -> Path:
    """The folder Aim's `repo=` names (Aim keeps its data in `<repo>/.aim`)."""
    return run_path.parent if shared else run_path / "logs" / "aim"


def tensorboard_dir(run_path: Path, shared: bool) -> Path:
    """The run's TensorBoard event folder; its parent is what `--logdir` names."""
    return run_path.parent / "tb" / run_path.name if shared else run_path / "logs" / "tensorboard"
