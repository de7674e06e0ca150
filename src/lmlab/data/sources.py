"""Corpora by name: `pystdlib` (offline built-in), `shakespeare` (cached download), `file:PATH`,
`dir:PATH[:GLOB]` (every matching file a document), `hf:DATASET[:config][:split]` (HF `datasets`)."""

from __future__ import annotations

import hashlib
import os
import sysconfig
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import DataError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
PYSTDLIB_DEFAULT_CHARS = 4_000_000
KNOWN = "pystdlib, shakespeare, file:PATH, dir:PATH[:GLOB], hf:DATASET[:config][:split]"


@dataclass
class Corpus:
    """Text plus where it came from; `documents` (when there are several) are separated by EOS ids."""

    name: str
    text: str
    sha256: str
    documents: list[str] | None = None  # None: `text` is one document
    sources: list[dict] | None = None  # per-file path, size and sha256 (the data fingerprint)


def cache_dir(override: str | None = None) -> Path:
    """The lmlab cache: `override`, $LMLAB_CACHE_DIR, or ~/.cache/lmlab."""
    root = override or os.environ.get("LMLAB_CACHE_DIR") or Path.home() / ".cache" / "lmlab"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_text_file(path: Path, errors: str = "strict") -> str:
    """UTF-8 text of a file; invalid bytes are reported with file and offset, or replaced (errors="replace")."""
    if not path.is_file():
        raise DataError(f"data: file not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data: {path} is not UTF-8 at byte offset {exc.start} (byte 0x{raw[exc.start]:02x}); "
            "fix the file or set data.errors=replace to substitute U+FFFD"
        ) from None


def _file_record(path: Path) -> dict:
    raw = path.read_bytes()
    return {"path": str(path), "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def dir_documents(spec: str, errors: str = "strict") -> tuple[list[str], list[dict]]:
    """`PATH[:GLOB]` -> the text of every matching file (default `**/*.txt`), in sorted path order."""
    root, _, pattern = spec.partition(":")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"data: directory not found: {root_path}")
    files = sorted(p for p in root_path.glob(pattern or "**/*.txt") if p.is_file())
    if not files:
        raise DataError(f"data: no files match {pattern or '**/*.txt'} under {root_path}")
    return [read_text_file(f, errors) for f in files], [_file_record(f) for f in files]


def hf_documents(spec: str) -> list[str]:
    """`DATASET[:config][:split]` through HF `datasets` (a name downloads; a local path loads offline)."""
    from lmlab.errors import require

    datasets = require("datasets", "data")
    name, config, split = ([*spec.split(":"), None, None])[:3]
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as exc:
        raise DataError(f"data: hf:{spec} could not be loaded: {str(exc).splitlines()[0]}") from None
    column = (
        "text"
        if "text" in ds.column_names
        else next((c for c in ds.column_names if ds.features[c].dtype == "string"), None)
    )
    if column is None:
        raise DataError(f"data: hf:{spec} has no text column; columns: {', '.join(ds.column_names)}")
    return [t for t in ds[column] if t]


def pystdlib_text(max_chars: int) -> str:
    """The Python standard library's top-level .py sources on this machine, in sorted order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(lib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise DataError(f"data: no Python sources found under {lib}")
    return "".join(parts)[:max_chars]


def shakespeare_text(cache: Path) -> str:
    """Tiny Shakespeare from $LMLAB_DATA_DIR or the cache, downloading once (sha256-checked) if absent."""
    candidates = [Path(d) / "tinyshakespeare.txt" for d in (os.environ.get("LMLAB_DATA_DIR"),) if d]
    candidates.append(cache / "tinyshakespeare.txt")
    for path in candidates:
        if path.is_file():
            return _checked(path.read_bytes(), str(path))
    target = candidates[-1]
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=20) as resp:
            raw = resp.read()
    except OSError as exc:
        raise DataError(
            f"data: shakespeare is not in {' or '.join(map(str, candidates))} and the download failed ({exc}); "
            "put tinyshakespeare.txt there (or set LMLAB_DATA_DIR), or use file:PATH"
        ) from None
    text = _checked(raw, SHAKESPEARE_URL)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(raw)
    tmp.replace(target)
    return text


def _checked(raw: bytes, where: str) -> str:
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise DataError(f"data: {where} has sha256 {digest[:12]}..., expected {SHAKESPEARE_SHA256[:12]}...")
    return raw.decode("utf-8")


def load_corpus(name: str, *, max_chars: int | None = None, cache: str | None = None, errors: str = "strict") -> Corpus:
    """The corpus called `name`, optionally truncated to `max_chars` characters."""
    documents, records = None, None
    if name.startswith("file:"):
        path = Path(name[5:]).expanduser()
        text = read_text_file(path, errors)
        records = [_file_record(path)]
    elif name.startswith(("dir:", "hf:")):
        if name.startswith("dir:"):
            documents, records = dir_documents(name[4:], errors)
        else:
            documents = hf_documents(name[3:])
        if max_chars:
            documents = _truncate(documents, max_chars)
        text = "\n".join(documents)
    elif name == "pystdlib":
        text = pystdlib_text(max_chars or PYSTDLIB_DEFAULT_CHARS)
    elif name == "shakespeare":
        text = shakespeare_text(cache_dir(cache))
    else:
        raise DataError(f"data.name: unknown corpus '{name}'; known: {KNOWN}")
    if max_chars:
        text = text[:max_chars]
    if not text:
        raise DataError(f"data: corpus '{name}' is empty")
    digest = _digest(text) if documents is None else _digest("\x1e".join(documents))
    return Corpus(name=name, text=text, sha256=digest, documents=documents, sources=records)


def _truncate(documents: list[str], max_chars: int) -> list[str]:
    out, total = [], 0
    for d in documents:
        if total >= max_chars:
            break
        out.append(d[: max_chars - total])
        total += len(out[-1])
    return out
