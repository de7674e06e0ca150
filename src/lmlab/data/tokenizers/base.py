"""The tokenizer protocol and how a run saves and reloads its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, runtime_checkable

from lmlab.errors import CheckpointError


@runtime_checkable
class BaseTokenizer(Protocol):
    """What training, generation and serving need from a tokenizer."""

    name: str

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        ...

    def encode(self, text: str) -> list[int]:
        """Text -> ids."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Ids -> text."""
        ...

    def to_dict(self) -> dict:
        """A JSON-serialisable description that `from_dict` turns back into the same tokenizer."""
        ...

    def fingerprint(self) -> str:
        """A short hash that changes whenever encoding would change."""
        ...


def save_tokenizer(tok: BaseTokenizer, path: str | Path) -> None:
    """Write the tokenizer as JSON with its registered name."""
    Path(path).write_text(json.dumps({"name": tok.name, **tok.to_dict()}, ensure_ascii=False))


def load_tokenizer(path: str | Path) -> BaseTokenizer:
    """Read back a tokenizer written by `save_tokenizer`."""
    from lmlab.registry import TOKENIZER

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"tokenizer: {path} is missing")
    data = json.loads(path.read_text())
    return TOKENIZER.get(data.pop("name")).from_dict(data)


def build_tokenizer(spec: str, text: str, *, vocab_size: int | None = None) -> BaseTokenizer:
    """The tokenizer `data.tokenizer` names, trained on `text` where it learns (`bpe`, `char`, `word`).

    `NAME:ARG` passes ARG as the source: `hf:./dir`, `hf:gpt2`, `tiktoken:gpt2`.
    """
    from lmlab.registry import TOKENIZER

    name, _, arg = spec.partition(":")
    return TOKENIZER.get(name).train(text, vocab_size=vocab_size, source=arg or None)
