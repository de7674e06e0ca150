"""Crash-safe checkpoints: weights in safetensors, trainer state in a tensors-only file.

A checkpoint is a folder `step_NNNNNNNN/` with `model.safetensors`, `state.pt` and `meta.json`
(sizes and sha256 of the other two). It is written under a temporary name, every file fsynced,
then renamed into place, so a crash or `kill -9` at any moment leaves the previous checkpoints
intact and at worst a `.tmp` folder that readers ignore.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from lmlab.errors import CheckpointError

PREFIX = "step_"
FILES = ("model.safetensors", "state.pt")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    root: str | Path, step: int, model: torch.nn.Module, state: dict, *, extra: dict | None = None
) -> Path:
    """Atomically write checkpoint `step` under `root`; returns its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    meta = {"step": step, "files": {}, **(extra or {})}
    for name in FILES:
        _fsync(tmp / name)
        meta["files"][name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    _fsync(tmp / "meta.json")
    _fsync(tmp)
    if final.exists():  # re-saving a step (e.g. after resume): move the old one aside first
        old = root / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync(root)
    return final


def verify_checkpoint(path: str | Path) -> dict:
    """The checkpoint's meta after checking that every file is present, complete and unaltered."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint: {path} is not a checkpoint (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint: {meta_path} is unreadable") from None
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint: {f} is missing")
        if f.stat().st_size != files[name]["bytes"] or _sha256(f) != files[name]["sha256"]:
            raise CheckpointError(f"checkpoint: {f} is truncated or corrupt (size/sha256 mismatch)")
    return meta


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under `root`, oldest first (temporary folders excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_valid(root: str | Path) -> Path | None:
    """The newest checkpoint that verifies; damaged ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
    return None


def load_checkpoint(path: str | Path, model: torch.nn.Module, *, map_location: str | torch.device = "cpu") -> dict:
    """Load weights into `model` and return the trainer state (read with weights_only=True)."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        load_model(model, str(path / "model.safetensors"), device=str(map_location))
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint: {path} does not fit this model: {str(exc).splitlines()[0]}") from None
    return torch.load(path / "state.pt", map_location=map_location, weights_only=True)


def prune(root: str | Path, keep_last: int, *, keep: Path | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints (and `keep`, e.g. the best one)."""
    ckpts = list_checkpoints(root)
    for path in ckpts[:-keep_last] if keep_last else ckpts:
        if keep is None or path.resolve() != Path(keep).resolve():
            shutil.rmtree(path, ignore_errors=True)


def clean_partial(root: str | Path) -> list[Path]:
    """Remove temporary folders left by writes that were killed midway; returns what was removed."""
    root = Path(root)
    partial = [p for p in root.glob(f".{PREFIX}*") if p.is_dir()] if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial
