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
from safetensors.torch import load_file, save_file
from torch import Tensor

from lmlab.errors import CheckpointError

PREFIX = "step_"
FILES = ("model.safetensors", "state.pt")
WEIGHTS = ("model.safetensors",)  # what reading a model needs: no optimizer state


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_weights(path: str | Path, state_dict: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors; tensors shared under two names (tied weights) are stored once.

    `metadata` adds header entries (transformers wants `{"format": "pt"}`).
    """
    kept: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for name, t in state_dict.items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in kept:
            aliases[name] = kept[key]
            continue
        kept[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # a kill mid-write never leaves a partial file
    save_file(tensors, str(tmp), metadata={**(metadata or {}), "aliases": json.dumps(aliases)})
    os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600; weights are as readable as every other file
    _fsync(tmp)
    os.replace(tmp, path)


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """Inverse of `write_weights` (aliases restored)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    tensors = load_file(str(path))
    for name, target in aliases.items():
        tensors[name] = tensors[target]
    return tensors


def load_weights(model: torch.nn.Module, weights: dict[str, Tensor], where: str | Path) -> None:
    """Load into `model`; only tied parameters may be absent, and every shape must match."""
    own = model.state_dict()
    tied = {n for n, t in own.items() for m, u in own.items() if n != m and t.data_ptr() == u.data_ptr()}
    missing = [k for k in own if k not in weights and k not in tied]
    unexpected = [k for k in weights if k not in own]
    bad = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    if missing or unexpected or bad:
        detail = "; ".join(
            f"{label}: {', '.join(v[:4])}"
            for label, v in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad))
            if v
        )
        raise CheckpointError(f"checkpoint: {where} does not fit this model ({detail})")
    model.load_state_dict(weights, strict=False)


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
    root: str | Path, step: int, weights: torch.nn.Module | dict[str, Tensor], state: dict, *, extra: dict | None = None
) -> Path:
    """Atomically write checkpoint `step` (a model or a full state dict, plus trainer state); returns its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    write_weights(tmp / "model.safetensors", weights)
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


def read_meta(path: str | Path) -> dict:
    """A checkpoint's meta.json (step, file sizes and hashes, val_loss), without hashing the files."""
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint: {path} is not a checkpoint (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
        meta["files"]  # a meta without its file table is as unreadable as broken JSON
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint: {meta_path} is unreadable") from None
    return meta


def write_model(folder: str | Path, weights: dict[str, Tensor], model_config: dict) -> None:
    """`model.safetensors` and the `config.json` that rebuilds the model, in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(folder / "model.safetensors", weights)
    (folder / "config.json").write_text(json.dumps(model_config, indent=2))


def verify_checkpoint(path: str | Path, files: tuple[str, ...] = FILES) -> dict:
    """The checkpoint's meta after checking that `files` (default all) are present, complete and unaltered."""
    path = Path(path)
    meta = read_meta(path)
    recorded = meta["files"]
    for name in files:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint: {f} is missing")
        if f.stat().st_size != recorded[name]["bytes"] or _sha256(f) != recorded[name]["sha256"]:
            raise CheckpointError(f"checkpoint: {f} is truncated or corrupt (size/sha256 mismatch)")
    return meta


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under `root`, oldest first (temporary folders excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_valid(root: str | Path, files: tuple[str, ...] = FILES) -> Path | None:
    """The newest checkpoint whose `files` verify (`WEIGHTS` to read a model); damaged ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path, files)
            return path
        except CheckpointError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
    return None


def read_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu", verified: bool = False
) -> tuple[dict[str, Tensor], dict]:
    """Verified weights and trainer state of a checkpoint (state read with weights_only=True).

    `verified=True` skips the hash check for a path `latest_valid` has just verified.
    """
    path = Path(path)
    if not verified:
        verify_checkpoint(path)
    try:
        weights = read_weights(path / "model.safetensors")
        state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    except Exception as exc:  # a file that passed the hash check but is not ours
        raise CheckpointError(f"checkpoint: {path} cannot be read: {str(exc).splitlines()[0]}") from None
    return weights, state


def load_checkpoint(path: str | Path, model: torch.nn.Module, *, map_location: str | torch.device = "cpu") -> dict:
    """Load weights into `model` and return the trainer state."""
    weights, state = read_checkpoint(path, map_location=map_location)
    load_weights(model, weights, path)
    return state


def prune(root: str | Path, keep_last: int, *, keep: Path | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints (and `keep`, e.g. the best one)."""
    ckpts = list_checkpoints(root)
    for path in ckpts[:-keep_last] if keep_last else ckpts:
        if keep is None or path.resolve() != Path(keep).resolve():
            _remove(path)


def _remove(path: Path) -> None:
    """Delete a checkpoint folder; renamed out of the listing first, so a kill midway never leaves a
    half-deleted `step_N` (its meta.json naming files that are gone) among the checkpoints."""
    doomed = path.with_name(f".{path.name}.del-{os.getpid()}")
    try:
        path.rename(doomed)
    except FileNotFoundError:  # already gone
        return
    shutil.rmtree(doomed, ignore_errors=True)


def clean_partial(root: str | Path) -> list[Path]:
    """Remove temporary folders left by writes or deletions that were killed midway; returns what was removed."""
    root = Path(root)
    partial = [p for p in root.glob(f".{PREFIX}*") if p.is_dir()] if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial
