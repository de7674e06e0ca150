"""`lmlab board`: the command that opens Aim or TensorBoard on every run under a save_dir (see `layout`)."""

from __future__ import annotations

from pathlib import Path

from lmlab.errors import LmlabError

VIEWERS = ("tensorboard", "aim")


def _found(root: Path) -> dict[str, Path]:
    """What each viewer would open under `root`: a save_dir's shared files, or one run's own logs/."""
    found = {}
    if (root / "tb").is_dir():
        found["tensorboard"] = root / "tb"
    elif (root / "logs" / "tensorboard").is_dir():
        found["tensorboard"] = root / "logs" / "tensorboard"
    if (root / ".aim").is_dir():
        found["aim"] = root
    elif (root / "logs" / "aim" / ".aim").is_dir():
        found["aim"] = root / "logs" / "aim"
    return found


def viewer_command(save_dir: str | Path, viewer: str | None = None, port: int | None = None) -> list[str]:
    """The argv that starts `viewer` (default: whichever has data, TensorBoard first) on `save_dir`."""
    root = Path(save_dir)
    if not root.is_dir():
        raise LmlabError(f"board: {root} does not exist; runs go there with `lmlab train --save-dir {root}`")
    found = _found(root)
    if not found and (root / "meta").is_dir():  # a run directory of the shared layout: its save_dir
        found = _found(root.parent)
    if viewer is None:
        viewer = next((v for v in VIEWERS if v in found), None)
    if viewer is None or viewer not in found:
        wanted = viewer or "tensorboard,aim"
        raise LmlabError(
            f"board: no {viewer or 'TensorBoard or Aim'} data under {root}; "
            f"train with `--track.trackers {wanted}` and `--save-dir {root}`"
        )
    if viewer == "aim":
        argv = ["aim", "up", "--repo", str(found["aim"])]
    else:
        argv = ["tensorboard", "--logdir", str(found["tensorboard"])]
    return argv + (["--port", str(port)] if port else [])


def find_viewer(name: str) -> str | None:
    """The viewer's executable: beside this Python first (an unactivated virtualenv), then on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)
