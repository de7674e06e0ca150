"""Name -> class registries with metadata: the only switchboard between config strings and blocks."""

from __future__ import annotations

import difflib
import importlib
import os
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
    options: type | None = None  # the component's own settings (a pydantic model), e.g. model.<options_key>
    options_key: str | None = None


class Registry:
    """Case-insensitive name -> component map; unknown names raise with the known names."""

    def __init__(self, kind: str, package: str | None = None, contract: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.package = package
        self.contract = contract  # what every registered class must provide, checked when it registers
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
        options: type | None = None,
        options_key: str | None = None,
    ):
        """Class decorator that registers the class under `name` (and its aliases).

        `options` is the block's settings class, declared in the block's own file; the model config
        validates it under `model.<options_key>` (default: the name), and flags, environment
        variables, YAML keys and the docs pick it up from here.
        """

        def deco(cls: type) -> type:
            missing = [attr for attr in self.contract if not hasattr(cls, attr)]
            if missing:
                raise TypeError(
                    f"{self.kind} '{name}' ({cls.__qualname__}) lacks {', '.join(missing)}; "
                    f"every {self.kind} provides: {', '.join(self.contract)}"
                )
            key = name.lower()
            entry = Entry(
                key,
                cls,
                tuple(tags),
                dict(caps or {}),
                paper,
                tuple(a.lower() for a in aliases),
                options,
                (options_key or key) if options is not None else None,
            )
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
        load_plugins()
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

    def __getitem__(self, name: str) -> type:
        """`ATTN["mla"]`: the class registered under `name` (case-insensitive), like `get`."""
        return self.get(name)

    def canonical(self, name: str) -> str:
        """The canonical (registered) name for `name`."""
        return self.entry(name).name

    def get(self, name: str) -> type:
        """The class registered under `name`."""
        return self.entry(name).cls


def load_plugins() -> None:
    """Import the modules named in LMLAB_PLUGINS (comma-separated): blocks registered outside the package."""
    for name in filter(None, (n.strip() for n in os.environ.get("LMLAB_PLUGINS", "").split(","))):
        importlib.import_module(name)


def option_sections(section: str = "model") -> dict[str, type]:
    """{<key>: options class} of every component registered for `section` that declares settings
    (`model.rope`, `train.muon`)."""
    regs = SECTION_REGISTRIES.get(section, {}).values()
    return {e.options_key: e.options for reg in regs for e in reg.entries() if e.options}


ATTN = Registry("attention", "lmlab.attn", contract=("forward", "new_cache", "flops_per_token", "kv_bytes_per_token"))
FFN = Registry("feed-forward", "lmlab.ffn", contract=("forward", "flops_per_token", "aux_loss"))
NORM = Registry("norm", "lmlab.norm", contract=("forward",))
POS = Registry("position", "lmlab.pos", contract=("embed", "context"))
EMBED = Registry("embedding", "lmlab.embed", contract=("forward",))
OPTIM = Registry("optimizer", "lmlab.optim", contract=("build",))
TOKENIZER = Registry("tokenizer", "lmlab.data.tokenizers")
TRACKER = Registry("tracker", "lmlab.track")

BLOCK_REGISTRIES: dict[str, Registry] = {"attn": ATTN, "ffn": FFN, "norm": NORM, "pos": POS, "embed": EMBED}
# Which config section validates each registry's component options (`model.<key>`, `train.<key>`).
SECTION_REGISTRIES: dict[str, dict[str, Registry]] = {"model": BLOCK_REGISTRIES, "train": {"optim": OPTIM}}


def component_registries() -> list[tuple[str, str, Registry]]:
    """(section, field, registry) for every registry a config field chooses from: ("model", "attn", ATTN), ...,
    ("train", "optim", OPTIM)."""
    return [(section, name, reg) for section, regs in SECTION_REGISTRIES.items() for name, reg in regs.items()]
