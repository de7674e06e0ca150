"""The generated reference pages: block catalogue (registry), config reference (schema), CLI reference (click app).

The docs site renders these at build time (`docs/gen_pages.py`), so a new block file, config
field or command appears in the documentation with no edit to it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import click

from lmlab.config import SECTIONS, ModelConfig
from lmlab.errors import ConfigError
from lmlab.registry import BLOCK_REGISTRIES, SECTION_REGISTRIES, component_registries

KIND_TITLES = {
    "attn": "Attention",
    "ffn": "Feed-forward",
    "norm": "Norm",
    "pos": "Position",
    "embed": "Embedding",
    "optim": "Optimizer",
}

# Values a block's required field takes when the catalogue tries combinations.
_REQUIRED_SAMPLES = {"window": 64}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table_head(*columns: str) -> list[str]:
    """The header and rule lines of a Markdown table."""
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]


def _summary(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _try_config(**fields) -> str | None:
    """None when the combination validates, else the validator's reason."""
    for name, entry in (("attn", fields.get("attn")), ("ffn", fields.get("ffn"))):
        if entry:
            for req in BLOCK_REGISTRIES[name].entry(entry).caps.get("requires", []):
                fields.setdefault(req, _REQUIRED_SAMPLES.get(req))
    try:
        ModelConfig(**fields)
    except ConfigError as exc:
        return str(exc).splitlines()[0]
    return None


def combination_matrix(rows: str, cols: str) -> str:
    """A Markdown table of which `rows` blocks work with which `cols` blocks, as the validator decides."""
    col_names = BLOCK_REGISTRIES[cols].names()
    lines = [
        f"| {rows} \\ {cols} | " + " | ".join(f"`{c}`" for c in col_names) + " |",
        "| --- | " + " | ".join(":---:" for _ in col_names) + " |",
    ]
    notes: list[str] = []
    for r in BLOCK_REGISTRIES[rows].names():
        cells = []
        for c in col_names:
            reason = _try_config(**{rows: r, cols: c})
            if reason is None:
                cells.append("✓")
            else:
                notes.append(f"- `{r}` + `{c}`: {_cell(reason)}")
                cells.append(f"✗[^{len(notes)}]")
        lines.append(f"| `{r}` | " + " | ".join(cells) + " |")
    footnotes = [f"[^{i}]: {n[2:]}" for i, n in enumerate(notes, 1)]
    return "\n".join([*lines, "", *footnotes])


def block_catalogue() -> str:
    """Every registered block: name, aliases, paper, tags, what it declares, and the combination tables."""
    out = [
        *HIDE_TOC,
        "# Block catalogue",
        "",
        "Generated from the registry at build time: every block file under `src/lmlab/<kind>/` that",
        "registers itself appears here (and in `lmlab list`) with no other edit. Choose a block with",
        "its name in a config (`model.attn: mla`) or a flag (`--attn mla`); names are case-insensitive.",
        "",
    ]
    for section, kind, reg in component_registries():
        out += [
            f"## {KIND_TITLES.get(kind, kind)} (`{section}.{kind}`)",
            "",
            *_table_head("name", "aliases", "what it is", "paper", "tags", "declares"),
        ]
        for e in reg.entries():
            caps = {k: v for k, v in e.caps.items() if k != "short"}
            declares = "; ".join(f"{k}: {_value(v)}" for k, v in sorted(caps.items()))
            out.append(
                f"| `{e.name}` | {', '.join(f'`{a}`' for a in e.aliases)} | {_cell(_summary(e.cls))} "
                f"| {_cell(e.paper)} | {', '.join(e.tags)} | {_cell(declares)} |"
            )
        out.append("")
    out += [
        "## Supported combinations",
        "",
        "Each cell is what the config validator says about that pair (the rest of the config at its",
        "defaults); a ✗ links to the validator's reason.",
        "",
        "### Attention × position",
        "",
        combination_matrix("attn", "pos"),
        "",
        "### Attention × feed-forward",
        "",
        combination_matrix("attn", "ffn"),
        "",
    ]
    return "\n".join(out)


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "choice"
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


# Wide generated tables get the page's width: no table-of-contents column beside them.
HIDE_TOC = ["---", "hide:", "  - toc", "---", ""]
# the configuration tables have six columns of names that must not break: they take the whole width
HIDE_NAV_TOC = ["---", "hide:", "  - navigation", "  - toc", "---", ""]


def _value(v) -> str:
    """A capability's value as a reader wants it: floats to 4 significant digits (8/3 -> 2.667)."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _constraints(field) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for meta in field.metadata:
        for attr, sym in symbols.items():
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sym} {getattr(meta, attr)}")
    return ", ".join(parts)


def config_reference() -> str:
    """Every config field: type, default, allowed values, short flags and description (the long flag and the
    environment variable follow from the dotted name, as the page says)."""
    from lmlab.cli.schema_flags import ALL_SECTIONS, leaf_fields, schema_options
    from lmlab.command_config import COMMAND_SECTIONS

    # a command sees only its own sections, so its bare flags are the ones unique among them
    groups = [tuple(SECTIONS), *((name,) for name in COMMAND_SECTIONS)]
    flags = {
        opt.name: [o for o in opt.opts if not o.startswith("--no-")]
        for g in groups
        for opt in schema_options(g)
        if not opt.hidden  # the foreign spellings are documented on the Coming from nanoGPT page
    }
    out = [
        *HIDE_NAV_TOC,
        "# Configuration reference",
        "",
        "Generated from the pydantic schema at build time. Every field is a YAML/JSON key",
        "(`--config run.yaml`), the flag `--` + its dotted name (`--model.rope.theta`) and the environment",
        "variable `LMLAB_` + its dotted name in capitals with `__` for dots (`LMLAB_MODEL__ROPE__THETA`);",
        "the *short flags* column lists the shorter spellings. Precedence is flags > environment > config",
        "file > preset > defaults. Invalid values fail before any tensor is made, naming the field and the",
        "allowed values. The sections after `track` are the settings of the commands that use a trained",
        "run (`sample` is `lmlab generate`'s).",
        "",
    ]
    for section, cls in ALL_SECTIONS.items():
        out += [
            f"## `{section}`",
            "",
            _cell((cls.__doc__ or "").strip().splitlines()[0]),
            "",
            *_table_head("field", "type", "default", "allowed", "short flags", "description"),
        ]
        for path, field in leaf_fields(cls):
            dotted = ".".join((section, *path))
            allowed = _constraints(field)
            if typing.get_origin(field.annotation) is typing.Literal:
                allowed = ", ".join(f"`{a}`" for a in typing.get_args(field.annotation))
            elif len(path) == 1 and path[0] in SECTION_REGISTRIES.get(section, {}):
                names = SECTION_REGISTRIES[section][path[0]].names()
                allowed = "registered names: " + ", ".join(f"`{n}`" for n in names)
            default = "(computed)" if field.default_factory else f"`{field.default!r}`"
            short = [f for f in flags.get("__".join((section, *path)), []) if f != f"--{dotted}"]
            names = " ".join(f"`{f}`" for f in short)
            out.append(
                f"| `{dotted}` | {_cell(_type_name(field.annotation))} | {_cell(default)} | {_cell(allowed)} "
                f"| {names} | {_cell(field.description or '')} |"
            )
        out.append("")
    return "\n".join(out)


def cli_reference() -> str:
    """Every `lmlab` command and subcommand with its help text, as the CLI itself prints it."""
    from lmlab.cli.app import cli

    out = ["# CLI reference", "", "Generated from the CLI at build time; `lmlab COMMAND --help` prints the same.", ""]

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        ctx = click.Context(cmd, info_name=path[-1], parent=parent, terminal_width=100, max_content_width=100)
        if len(path) > 1:
            out.extend([f"{'#' * min(len(path), 4)} `{' '.join(path)}`", "", "```text", cmd.get_help(ctx), "```", ""])
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.list_commands(ctx)):
                walk(cmd.get_command(ctx, name), [*path, name], ctx)

    walk(cli, ["lmlab"], None)
    return "\n".join(out)


def hf_import_fields() -> str:
    """Every field of each importable transformers config and what `lmlab import` / `from_hf` does with it."""
    from lmlab.export.hf_fields import field_table

    out = [
        "# Hugging Face config fields",
        "",
        "Generated at build time from `lmlab.export.hf_fields` and transformers' default configs. Each field",
        "is *mapped* onto the lmlab config, *inert* (it cannot change the logits; the reason is given), or",
        "*allowed* only at the listed values; anything else is refused with one line naming field and value.",
        "A field this table does not list is accepted only at its family's default.",
        "",
    ]
    for family, fields in field_table().items():
        out += [f"## {family}", "", *_table_head("field", "treatment")]
        out += [f"| `{name}` | {_cell(rule)} |" for name, rule in fields.items()]
        out.append("")
    return "\n".join(out)


PAGES: dict[str, Callable[[], str]] = {
    "reference/blocks.md": block_catalogue,
    "reference/config.md": config_reference,
    "reference/cli.md": cli_reference,
    "reference/hf-fields.md": hf_import_fields,
}
