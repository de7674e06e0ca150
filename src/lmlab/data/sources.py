"""Corpora by name: `pystdlib` (offline built-in), `shakespeare` (cached download), `file:PATH`."""

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
KNOWN = "pystdlib, shakespeare, file:PATH"


@dataclass
class Corpus:
    """Text plus where it came from."""

    name: str
    text: str
    sha256: str


def cache_dir(override: str | None = None) -> Path:
    """The lmlab cache: `override`, $LMLAB_CACHE_DIR, or ~/.cache/lmlab."""
    root = override or os.environ.get("LMLAB_CACHE_DIR") or Path.home() / ".cache" / "lmlab"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_text_file(path: Path) -> str:
    """UTF-8 text of a file; invalid bytes are reported with their offset."""
    if not path.is_file():
        raise DataError(f"data: file not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data: {path} is not UTF-8 at byte offset {exc.start}") from None


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


def load_corpus(name: str, *, max_chars: int | None = None, cache: str | None = None) -> Corpus:
    """The corpus called `name`, optionally truncated to `max_chars` characters."""
    if name.startswith("file:"):
        text = read_text_file(Path(name[5:]).expanduser())
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
    return Corpus(name=name, text=text, sha256=_digest(text))
