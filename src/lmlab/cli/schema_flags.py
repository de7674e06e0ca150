"""Click options generated from the pydantic schema, so no flag is written twice.

Every field of every section gets `--section.field` (e.g. `--model.n_layer`) and, when its name is
unique across sections, the bare dashed form (`--n-layer`, `--norm-position`); nested models give
`--model.rope.theta` / `--rope.theta`. Values stay strings and are validated by the schema.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

import click
from pydantic import BaseModel

from lmlab.command_config import COMMAND_SECTIONS
from lmlab.config import ALIASES, SECTIONS, OptionsSection, set_path
from lmlab.registry import SECTION_REGISTRIES, option_sections

# Every section a command can take flags from: the run config's and the commands' own.
ALL_SECTIONS = {**SECTIONS, **COMMAND_SECTIONS}

# Short flags researchers type most, as (flag, dotted field or the fields it names in each section).
SHORTCUTS: dict[str, str | tuple[str, ...]] = {
    "attn": "model.attn",
    "ffn": "model.ffn",
    "norm": "model.norm",
    "pos": "model.pos",
    "layers": "model.n_layer",
    "heads": "model.n_head",
    "dim": "model.d_model",
    "seq-len": "train.seq_len",
    "context": "model.max_seq_len",
    "dropout": "model.dropout",
    "batch": ("train.batch_size", "eval.batch_size", "sample.batch_size"),
    "epochs": "train.epochs",
    "max-steps": "train.max_steps",
    "lr": "train.lr",
    "optim": "train.optim",
    "save-dir": "train.save_dir",
    "run-tag": "train.run_tag",
    "data": "data.name",
    "vocab-size": "data.vocab_size",
}


def leaf_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, pydantic field) for every scalar field, nested models flattened (("rope", "theta"), ...).

    A section with registered components also holds their own options (`model.rope.theta`,
    `train.muon.momentum`).
    """
    out = []
    with_options = isinstance(model, type) and issubclass(model, OptionsSection)
    for name, field in model.model_fields.items():
        if with_options and name == "block_options":
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += leaf_fields(ann, (*prefix, name))
        else:
            out.append(((*prefix, name), field))
    if with_options:
        for key, options in option_sections(model.SECTION).items():
            out += leaf_fields(options, (*prefix, key))
    return out


def _is_bool(ann: Any) -> bool:
    if ann is bool:
        return True
    args = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union else ()
    return bool(args) and all(a in (bool, type(None)) for a in args)


def _help(field: Any, path: tuple[str, ...] = ()) -> str:
    parts = [field.description or ""]
    registries = SECTION_REGISTRIES.get(path[0], {}) if len(path) == 2 else {}
    if path and path[-1] in registries:
        parts.append("registered: " + ", ".join(registries[path[-1]].names()))
    args = typing.get_args(field.annotation)
    if typing.get_origin(field.annotation) is typing.Literal:
        parts.append("one of: " + ", ".join(map(str, args)))
    if field.default is not None and not callable(field.default_factory):
        parts.append(f"default: {field.default}")
    return "; ".join(p for p in parts if p)


def schema_options(sections: tuple[str, ...] = tuple(SECTIONS)) -> list[click.Option]:
    """Click options for every field of the given config sections, plus the shortcuts."""
    leaves = [((sec, *path), field) for sec in sections for path, field in leaf_fields(ALL_SECTIONS[sec])]
    counts: dict[str, int] = {}
    for path, _ in leaves:
        counts[".".join(path[1:])] = counts.get(".".join(path[1:]), 0) + 1
    by_target = {
        target: flag
        for flag, targets in SHORTCUTS.items()
        for target in ((targets,) if isinstance(targets, str) else targets)
        if target.split(".")[0] in sections
    }
    options = []
    for path, field in leaves:
        dotted = ".".join(path)
        local = ".".join(path[1:])
        names = [f"--{dotted}"]
        if counts[local] == 1 and local.replace("_", "-") not in SHORTCUTS:
            names.append(f"--{local.replace('_', '-')}")
        if dotted in by_target and f"--{by_target[dotted]}" not in names:
            names.insert(0, f"--{by_target[dotted]}")
        dest = "__".join(path)
        if _is_bool(field.annotation):
            names = [f"{n}/--no-{n[2:]}" for n in names]
            options.append(click.Option([*names, dest], default=None, help=_help(field, path)))
        else:
            options.append(click.Option([*names, dest], default=None, help=_help(field, path), metavar="VALUE"))
    return options + _foreign_spellings(leaves, counts, options)


def _foreign_spellings(leaves: list, counts: dict[str, int], options: list[click.Option]) -> list[click.Option]:
    """Hidden flags for the spellings users bring from nanoGPT, HF and others: `--n_layer`, `--block_size`,
    `--block-size`, `--model.n_embd`, `--max_iters=2000`. Each sets the same field as its canonical flag."""
    taken = {name for opt in options for name in (*opt.opts, *opt.secondary_opts)}
    extra = []
    for path, field in leaves:
        section, local = path[0], ".".join(path[1:])
        spellings = [local] if counts[local] == 1 and "_" in local else []
        aliases = [a for a, target in ALIASES.get(section, {}).items() if target == local]
        spellings += [f"{section}.{a}" for a in aliases]
        spellings += [s for a in aliases if counts.get(a, 0) == 0 for s in (a, a.replace("_", "-"))]
        names = [f"--{s}" for s in dict.fromkeys(spellings) if f"--{s}" not in taken]
        taken.update(names)
        if not names:
            continue
        dest = "__".join(path)
        if _is_bool(field.annotation):
            names = [f"{n}/--no-{n[2:]}" for n in names]
        extra.append(click.Option([*names, dest], default=None, hidden=True))
    return extra


def collect_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Nested {section: {field: value}} from the parsed options that were given."""
    out: dict[str, Any] = {}
    for dest, value in params.items():
        if value is not None and "__" in dest:
            set_path(out, dest.split("__"), value)
    return out


class SchemaCommand(click.Command):
    """A command whose schema flags are made on first use: block options need the block registries (torch)."""

    def __init__(self, name: str, *, sections: tuple[str, ...] = tuple(SECTIONS), **kwargs: Any) -> None:
        self._sections, self._built, self._extra = sections, None, []
        super().__init__(name, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        """The command's own parameters, then one flag per schema field."""
        if self._built is None:
            self._built = [*self._extra, *schema_options(self._sections)]
        return self._built

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._extra, self._built = list(value or []), None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse; a mistyped flag is answered with the documented spellings, not the hidden foreign ones."""
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            shown = [o for p in self.params if isinstance(p, click.Option) and not p.hidden for o in p.opts]
            exc.possibilities = difflib.get_close_matches(exc.option_name, shown)
            raise
