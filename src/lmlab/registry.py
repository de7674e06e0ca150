"""Name -> class registries with metadata: the only switchboard between config strings and blocks."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from lmlab.errors import UnknownComponentError


@dataclass(frozen=True)
class Entry:
    """One registered component: its canonical name, class and metadata."""

    name: str
    cls: type
    tags: tuple[str, ...] = ()
    caps: dict[str, Any] = field(default_factory=dict)
    paper: str = ""
    aliases: tuple[str, ...] = ()


class Registry:
    """Case-insensitive name -> component map; unknown names raise with the known names."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._alias: dict[str, str] = {}
        self._discovered = package is None

    def register(
        self,
        name: str,
        *,
        tags: tuple[str, ...] | list[str] = (),
        caps: dict[str, Any] | None = None,
        paper: str = "",
        aliases: tuple[str, ...] | list[str] = (),
    ):
        """Class decorator that registers the class under `name` (and its aliases)."""

        def deco(cls: type) -> type:
            key = name.lower()
            entry = Entry(key, cls, tuple(tags), dict(caps or {}), paper, tuple(a.lower() for a in aliases))
            self._entries[key] = entry
            for alias in (key, *entry.aliases):
                self._alias[alias] = key
            cls.registry_name = key
            return cls

        return deco

    def _discover(self) -> None:
        # Importing every module of the block folder is what makes a new file appear with no other edit.
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        self._discover()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """All entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name.lower() in self._alias

    def entry(self, name: str) -> Entry:
        """The entry for `name` (case-insensitive); raises UnknownComponentError otherwise."""
        self._discover()
        key = str(name).lower()
        if key not in self._alias:
            known = self.names()
            close = difflib.get_close_matches(key, list(self._alias), n=1, cutoff=0.5)
            hint = f"; did you mean '{self._alias[close[0]]}'?" if close else ""
            raise UnknownComponentError(f"unknown {self.kind} '{name}'; known: {', '.join(known)}{hint}")
        return self._entries[self._alias[key]]

    def canonical(self, name: str) -> str:
        """The canonical (registered) name for `name`."""
        return self.entry(name).name

    def get(self, name: str) -> type:
        """The class registered under `name`."""
        return self.entry(name).cls


ATTN = Registry("attention", "lmlab.attn")
FFN = Registry("feed-forward", "lmlab.ffn")
NORM = Registry("norm", "lmlab.norm")
POS = Registry("position", "lmlab.pos")
EMBED = Registry("embedding", "lmlab.embed")
TOKENIZER = Registry("tokenizer", "lmlab.data.tokenizers")
TRACKER = Registry("tracker", "lmlab.track")

BLOCK_REGISTRIES: dict[str, Registry] = {"attn": ATTN, "ffn": FFN, "norm": NORM, "pos": POS, "embed": EMBED}
