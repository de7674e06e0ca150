"""`lmlab` commands: train, eval, generate, list, arch (plus the `exp-train` / `exp-eval` aliases)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from lmlab import __version__
from lmlab.cli.schema_flags import SchemaCommand, collect_overrides
from lmlab.cli.study import STUDY_OPTIONS, pending_is_not_an_error, placement, study_group
from lmlab.errors import LmlabError, user_errors
from lmlab.reference.cli import reference_group
from lmlab.registry import component_registries


def _resolve(params: dict):
    from lmlab.config import resolve_config

    flag, positional = params.pop("config", None), params.pop("config_path", None)
    if flag and positional:
        raise LmlabError(f"config: given twice ({positional} and --config {flag}); give one file")
    return resolve_config(
        preset=params.pop("preset", None),
        config_file=flag or positional,
        config_dir=params.pop("config_dir", None),
        cli=collect_overrides(params),
    )


COMMON = [
    click.Option(["--preset"], default=None, help="start from a named preset (see `lmlab list`)"),
    click.Option(["--config"], default=None, help="YAML, JSON or nanoGPT-style Python config file"),
    click.Option(
        ["--config-dir"],
        default=None,
        help="a folder of config files: model.json, train.yaml, data.yaml, track.yaml, tensorboard.json, "
        "a flat config.json (each optional)",
    ),
]


@click.group(
    name="lmlab",
    help="A plug-and-play transformer laboratory: compose, train, compare, sample and serve language models.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)
@click.version_option(__version__, prog_name="lmlab")
def cli() -> None:
    """Top-level group."""


SLURM_FOR_TRAIN = {"slurm_partition", "slurm_gpus_per_node", "slurm_time", "slurm_account", "slurm_cpus_per_task"}
LAUNCH_OPTIONS = [
    click.Option(
        ["--launcher", "train_launcher"],
        type=click.Choice(["local", "slurm", "submitit-local"]),
        default="local",
        show_default=True,
        help="local (this process, or each process torchrun starts), one SLURM job over --nodes through "
        "submitit ([cluster] extra), or submitit's local executor with a task per node on this host",
    ),
    click.Option(["--nodes"], type=int, default=1, show_default=True, help="nodes of the job (with --launcher)"),
    click.Option(
        ["--nproc-per-node"],
        type=int,
        default=None,
        help="processes per node (with --launcher); default --slurm.gpus-per-node, else 1",
    ),
    *[o for o in STUDY_OPTIONS if o.name in SLURM_FOR_TRAIN],  # per job of a study = per node of this job
    click.Option(["--detach", "slurm_detach"], is_flag=True, default=False, help="with --launcher: submit and exit"),
]


def _launch_argv(argv: list[str]) -> list[str]:
    """The arguments after `lmlab train` (or `exp-train`) in `argv`, less the launcher's own options (what every node runs)."""
    valued = {opt for o in LAUNCH_OPTIONS if not o.is_flag for opt in o.opts}
    flags = {opt for o in LAUNCH_OPTIONS if o.is_flag for opt in o.opts}
    rest, out, skip = argv[2:] if argv[1:2] == ["train"] else argv[1:], [], False  # lmlab train | exp-train
    for arg in rest:
        if skip:
            skip = False
        elif arg in valued:
            skip = True
        elif arg not in flags and arg.split("=", 1)[0] not in valued:
            out.append(arg)
    return out


def _launch(params: dict) -> bool:
    """With --launcher slurm or submitit-local: submit the run as one job over --nodes and report it (True);
    False when it trains here."""
    launcher, nodes, nproc = params.pop("train_launcher"), params.pop("nodes"), params.pop("nproc_per_node")
    slurm = {k[len("slurm_") :]: params.pop(k) for k in [*SLURM_FOR_TRAIN, "slurm_detach"]}
    if launcher == "local":
        if nodes != 1:
            raise LmlabError(
                f"train --nodes {nodes}: needs --launcher slurm (or submitit-local); on nodes you start "
                "yourself, run torchrun as docs/howto/distributed.md shows"
            )
        return False
    from lmlab.pipeline.train_cluster import submit_train

    cfg = _resolve(params)  # a bad config is refused here, before it waits in a queue
    detach = bool(slurm.pop("detach"))
    out = submit_train(
        _launch_argv(sys.argv),
        save_dir=cfg.train.save_dir,
        nodes=nodes,
        nproc_per_node=nproc or slurm.get("gpus_per_node") or 1,
        launcher=launcher,
        slurm={k: v for k, v in slurm.items() if v is not None},
        detach=detach,
    )
    if out is None:
        click.echo("train: submitted; the run directory fills as it trains (lmlab runs, or the job's log)", err=True)
    else:
        click.echo(out, nl=False)
    return True


@user_errors
def _train(**params) -> None:
    from lmlab.pipeline.train import train_from_config
    from lmlab.utils import dist

    if _launch(params):
        return
    result = train_from_config(_resolve(params))
    m = result.metrics
    val = "n/a" if m.get("val_loss") is None else f"{m['val_loss']:.4f}"
    if m.get("interrupted"):
        if dist.is_main():
            click.echo(f"interrupted at step {m['step']}; checkpoint written. Resume with:", err=True)
            click.echo(f"  {_resume_command(result.run.path)}", err=True)
        sys.exit(130)
    if not dist.is_main():  # under torchrun, rank 0 speaks for the run
        return
    if m.get("already_complete"):
        click.echo(
            f"already complete: {result.run.path} finished at step {m['step']} (val loss {val}); "
            "nothing to train (raise --max-steps to continue it)"
        )
        return
    click.echo(f"done: step {m.get('step')} | val loss {val} | run {result.run.path}")
    for i, s in enumerate(result.samples):
        click.echo(f"\n--- sample {i + 1} ---\n{s}")


def _resume_command(run: Path) -> str:
    """This command line again, resuming `run` (any earlier --train.resume replaced)."""
    import shlex

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--train.resume":
            skip = True
        elif not arg.startswith("--train.resume="):
            args.append(arg)
    return shlex.join(["lmlab", *args, "--train.resume", str(run)])


train_command = cli.command(
    "train",
    cls=SchemaCommand,
    params=[*COMMON, *LAUNCH_OPTIONS, click.Argument(["config_path"], required=False)],
    help="Train a model; every config field is a flag (precedence: flags > LMLAB_* env > --config > --preset). "
    "CONFIG_PATH is a config file as --config takes (nanoGPT's `lmlab train config/x.py --max_iters=100`).",
)(_train)


@user_errors
def _arch(seq_len_flops: int | None, **params) -> None:
    from lmlab.model.cost import cost_card

    cfg = _resolve(params)
    click.echo(cost_card(cfg.model, seq_len_flops or cfg.model.max_seq_len))


arch_command = cli.command(
    "arch",
    cls=SchemaCommand,
    sections=("model",),
    params=[
        *COMMON,
        click.Option(
            ["--at-seq-len", "seq_len_flops"],
            type=int,
            default=None,
            help="sequence length for FLOPs (default max_seq_len)",
        ),
    ],
    help="Components, parameters per component and FLOPs per token of a config, without training.",
)(_arch)


def _settings(section: str, params: dict):
    """A command's own validated settings (`lmlab.command_config`) from its schema flags."""
    from lmlab.command_config import command_settings

    return command_settings(section, collect_overrides(params).get(section, {}))


RUN = click.Option(["--run", "run"], required=True, help="run directory")


@user_errors
def _eval(run: str, **params) -> None:
    from lmlab.infer.evaluate import evaluate_documents, evaluate_run

    opts = _settings("eval", params)
    if opts.harness:
        from lmlab.infer.harness import make_table, run_harness  # names the extra to install without lm-eval

        tasks = [t.strip() for t in opts.harness.split(",") if t.strip()]
        result = run_harness(
            run, tasks, include=opts.include, limit=opts.limit, num_fewshot=opts.num_fewshot,
            batch_size=opts.batch_size or 8, device=opts.device,
        )  # fmt: skip
        click.echo(make_table(result))
        return
    if opts.documents:
        result = evaluate_documents(run, opts.documents, batch_size=opts.batch_size or 8, device=opts.device)
    else:
        result = evaluate_run(run, iters=opts.iters, batch_size=opts.batch_size, device=opts.device)
    click.echo(json.dumps(result, indent=2))


eval_command = cli.command(
    "eval",
    cls=SchemaCommand,
    sections=("eval",),
    params=[RUN],
    help="Validation loss, bits per token, character and byte of a trained run (or of --documents scored in full, "
    "or lm-evaluation-harness tasks with --harness); writes eval/eval.json.",
)(_eval)


@user_errors
def _generate(run: str, prompts: tuple[str, ...], prompts_file: str | None, **params) -> None:
    from lmlab.infer.load import load_run
    from lmlab.infer.text_stream import TextStream
    from lmlab.model.generate import iter_generate, left_pad
    from lmlab.utils.hardware import resolve_device

    opts = _settings("sample", params)
    texts = list(prompts)
    if prompts_file:
        texts += [line for line in Path(prompts_file).read_text(encoding="utf-8").splitlines() if line]
    texts = texts or ["\n"]
    dev = resolve_device(opts.device)
    loaded = load_run(run, device=dev)
    if loaded.src_tokenizer is not None:
        _translate_prompts(loaded, texts, opts.max_new_tokens)
        return
    options = {"temperature": opts.temperature, "top_k": opts.top_k, "top_p": opts.top_p, "min_p": opts.min_p}
    options |= {"repetition_penalty": opts.repetition_penalty, "use_cache": opts.cache}
    options |= _decode_options(opts, dev, [loaded])
    stats = options.get("draft_stats")
    rows = [(p, i, text) for p, text in enumerate(texts) for i in range(opts.num_samples)]  # (prompt, sample, text)
    size = 1 if opts.stream else opts.batch_size
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        ids, pad = left_pad([_prompt_ids(loaded.tokenizer, text) for *_, text in chunk], device=dev)
        streams = [TextStream(loaded.tokenizer, []) for _ in chunk]
        pieces = [""] * len(chunk)
        if opts.stream:
            _echo_sample_header(chunk[0], len(texts), opts.num_samples)
        seeds = [opts.seed + i for _, i, _ in chunk]
        steps = iter_generate(loaded.model, ids, opts.max_new_tokens, seed=seeds, pad=pad, **options)
        for tok, _ in steps:
            for r, dec in enumerate(streams):
                pieces[r] += dec.push(int(tok[r, 0]))
            if opts.stream:
                click.echo(pieces[0], nl=False)
                pieces[0] = ""
        for r, row in enumerate(chunk):
            if not opts.stream:
                _echo_sample_header(row, len(texts), opts.num_samples)
            click.echo(pieces[r] + streams[r].flush())
    if stats is not None:
        click.echo(f"draft: {stats.accepted} of {stats.proposed} proposed tokens accepted ({stats.rate:.0%})", err=True)


def _decode_options(opts, device, runs) -> dict:
    """iter_generate's compile and draft options from `sample` or `serve` settings; the draft run is loaded
    here and refused in one line when it cannot propose for the model."""
    from lmlab.errors import ConfigError
    from lmlab.infer.load import load_run
    from lmlab.model.speculative import DraftStats, check_draft

    out: dict = {"compile": opts.compile} if opts.compile else {}
    if opts.draft is None:
        return out
    runs = list(runs)
    if len(runs) != 1:
        raise ConfigError(f"{opts.SECTION}.draft: a draft serves one model; give one --run, not {len(runs)}")
    draft = load_run(opts.draft, device=device)
    check_draft(runs[0].model, draft.model)
    if draft.tokenizer.fingerprint() != runs[0].tokenizer.fingerprint():
        raise ConfigError(f"{opts.SECTION}.draft: {opts.draft} has another tokenizer; a draft needs the model's")
    return out | {"draft": draft.model, "draft_tokens": opts.draft_tokens, "draft_stats": DraftStats()}


generate_command = cli.command(
    "generate",
    cls=SchemaCommand,
    sections=("sample",),
    params=[
        RUN,
        click.Option(
            ["--prompt", "prompts"], multiple=True, help="text to continue (repeat for a batch; default a newline)"
        ),
        click.Option(
            ["--prompts-file"], type=click.Path(exists=True, dir_okay=False), default=None, help="one prompt per line"
        ),
    ],
    help="Sample continuations of one or more prompts from a trained run. Sample i of every prompt uses "
    "seed + i, so a prompt's text is the same whether it is decoded alone or in a left-padded batch.",
)(_generate)


def _translate_prompts(loaded, texts: list[str], max_new_tokens: int) -> None:
    """`generate` on an encoder-decoder run: each prompt's greedy translation, one per line."""
    from lmlab.infer.translate import translate

    click.echo(
        "an encoder-decoder run: each prompt is translated greedily (`lmlab translate` has beam search)", err=True
    )
    for out in translate(loaded, [t.strip() for t in texts], max_len=max_new_tokens or None):
        click.echo(out)


def _prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt's ids; one that encodes to nothing starts from the tokenizer's BOS (else end-of-text) id."""
    from lmlab.errors import ConfigError

    ids = tokenizer.encode(text)
    if ids:
        return ids
    start = next(
        (i for i in (getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)) if i is not None), None
    )
    if start is None:
        raise ConfigError(
            f"generate: the prompt {text!r} encodes to no tokens and the tokenizer has no start id; give text"
        )
    return [start]


def _echo_sample_header(row: tuple[int, int, str], n_prompts: int, num_samples: int) -> None:
    """The '--- sample k ---' line (when there are several) and the prompt itself."""
    p, i, text = row
    if n_prompts > 1:
        click.echo(f"--- prompt {p + 1}, sample {i + 1} ---")
    elif num_samples > 1:
        click.echo(f"--- sample {i + 1} ---")
    click.echo(text, nl=False)


@user_errors
def _prepare(**params) -> None:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lmlab.data.datasets import prepare_data

    data = _resolve(params).data
    console = Console(width=120)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("tokenising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("shards", total=None)
        _, tokenizer, splits = prepare_data(
            data, on_piece=lambda done, total: bar.update(task, completed=done, total=total)
        )
    m = splits.meta
    rows = [
        (
            "corpus",
            f"{m['corpus']} ({m['documents']:,} document(s), {m['n_chars']:,} chars, {m['n_bytes'] / 1e6:.1f} MB)",
        ),
        ("tokenizer", f"{data.tokenizer} ({tokenizer.vocab_size:,} ids, fingerprint {m['tokenizer']})"),
        ("tokens", f"{m['n_tokens']:,} ({m['n_train']:,} train / {m['n_val']:,} val), {m['dtype']}"),
        ("chars per token", f"{m['n_chars'] / m['n_tokens']:.3f}"),
        ("shards", f"{m['cache']} ({'reused' if m['reused'] else 'built'})"),
        (
            "throughput",
            f"{m['mb_per_s']:.2f} MB/s over {m['processes']} process(es) when built; this call {time.perf_counter() - t0:.1f} s",
        ),
    ]
    for k, v in rows:
        console.print(f"[bold]{k:>16}[/bold]  {v}")


prepare_command = cli.command(
    "prepare",
    cls=SchemaCommand,
    sections=("data",),
    params=[*COMMON],
    help="Tokenise a corpus ahead of training (in parallel, into the shard cache) and print its statistics.",
)(_prepare)


@user_errors
def _translate(run: str, sentences: tuple[str, ...], **params) -> None:
    from lmlab.infer.load import load_run
    from lmlab.infer.translate import translate
    from lmlab.utils.hardware import resolve_device

    opts = _settings("translate", params)
    loaded = load_run(run, device=resolve_device(opts.device))
    for out in translate(loaded, list(sentences), beam=opts.beam, alpha=opts.alpha, max_len=opts.max_len):
        click.echo(out)


translate_command = cli.command(
    "translate",
    cls=SchemaCommand,
    sections=("translate",),
    params=[
        click.Option(["--run", "run"], required=True, help="run directory of an encoder-decoder (arch=seq2seq) run"),
        click.Argument(["sentences"], nargs=-1, required=True),
    ],
    help="Translate sentences with a trained encoder-decoder run (unknown words become <unk>).",
)(_translate)


@user_errors
def _serve(runs: tuple[str, ...], compare: tuple[str, str] | None, **params) -> None:
    import os

    from lmlab.errors import ConfigError
    from lmlab.infer.load import load_run
    from lmlab.infer.server import Limits, check_port, serve
    from lmlab.utils.hardware import resolve_device

    opts = _settings("serve", params)
    paths = list(runs) + list(compare or [])
    if not paths:
        raise ConfigError("serve: give --run DIR (or --compare RUN_A RUN_B)")
    check_port(opts.host, opts.port)  # before loading: a busy port fails at once, in one line
    dev = resolve_device(opts.device)
    loaded = {}
    for p in paths:
        name = Path(p).name
        loaded[name if name not in loaded else f"{name}-{len(loaded)}"] = load_run(p, device=dev)
    decode = _decode_options(opts, dev, loaded.values())
    for run in loaded.values():
        run.decode = decode
    limits = Limits(
        max_tokens=opts.max_tokens,
        max_body_bytes=opts.max_body_kb * 1024,
        max_concurrent=opts.max_concurrent,
        max_batch=opts.max_batch,
    )
    serve(loaded, host=opts.host, port=opts.port, limits=limits, api_key=os.environ.get(opts.api_key_env) or None)


serve_command = cli.command(
    "serve",
    cls=SchemaCommand,
    sections=("serve",),
    params=[
        click.Option(["--run", "runs"], multiple=True, help="run directory to serve (repeat for several models)"),
        click.Option(["--compare"], nargs=2, default=None, help="RUN_A RUN_B: serve both and add POST /v1/compare"),
    ],
    help="Serve trained runs over an OpenAI-compatible HTTP API (extra [serve]).",
)(_serve)


@user_errors
def _export(run: str, **params) -> None:
    from lmlab.pipeline.export import export_run

    opts = _settings("export", params)
    report = export_run(run, opts.format, opts.out)
    layout = f", {report['layout']}" if "layout" in report else ""
    click.echo(
        f"exported {report['out']} ({opts.format}{layout}); logit parity max |diff| {report['max_abs_logit_diff']:.2e}"
    )
    if report.get("layout") == "remote code":
        click.echo("load it with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)")


export_command = cli.command(
    "export",
    cls=SchemaCommand,
    sections=("export",),
    params=[RUN],
    help="Export a run's weights; `hf` is loadable by transformers.AutoModelForCausalLM and parity-checked.",
)(_export)


@cli.command("import")
@click.option("--hf", "hf_dir", required=True, help="local transformers GPT-2 or Llama checkpoint directory")
@click.option("--save-dir", default="runs", show_default=True)
@click.option("--run-tag", default="imported", show_default=True)
@user_errors
def import_cmd(hf_dir: str, save_dir: str, run_tag: str) -> None:
    """Turn a local transformers checkpoint into a run directory (fine-tune with --train.init_from RUN)."""
    from lmlab.pipeline.export import import_hf

    click.echo(f"imported {hf_dir} -> {import_hf(hf_dir, save_dir, run_tag)}")


@cli.command("list")
@click.argument(
    "kind", required=False, type=click.Choice([field for _, field, _ in component_registries()] + ["presets"])
)
@user_errors
def list_cmd(kind: str | None) -> None:
    """Every registered block and optimizer with its tags and options, and the presets."""
    from rich.console import Console
    from rich.table import Table

    from lmlab.config import list_presets

    console = Console(width=160)
    if kind != "presets":
        table = Table("kind", "name", "tags", "options", "paper")
        for section, field, reg in component_registries():
            if kind in (None, field):
                for e in reg.entries():
                    aliases = f" ({', '.join(e.aliases)})" if e.aliases else ""
                    options = f"{section}.{e.options_key}: {', '.join(e.options.model_fields)}" if e.options else ""
                    table.add_row(field, e.name + aliases, ", ".join(e.tags), options, e.paper)
        console.print(table)
    if kind in (None, "presets"):
        console.print("presets: " + ", ".join(list_presets()))


@cli.command("compare")
@click.argument("runs", nargs=-1)
@click.option("--latest", type=int, default=None, help="compare the N most recent runs under --root")
@click.option("--root", default="runs", show_default=True, help="where --latest looks")
@click.option("--out", default=None, help="folder for the PNGs and report.html (default: runs root/compare)")
@click.option("--diff", "diff_mode", is_flag=True, help="with two runs: config differences and aligned val loss")
@click.option(
    "--axis",
    type=click.Choice(["step", "tokens", "flops", "wall"]),
    default="tokens",
    show_default=True,
    help="alignment axis for --diff",
)
@click.option("--force", is_flag=True, help="--diff runs validated on different data anyway")
@user_errors
def compare_cmd(
    runs: tuple[str, ...], latest: int | None, root: str, out: str | None, diff_mode: bool, axis: str, force: bool
) -> None:
    """Rank runs by validation loss; plot loss vs step, tokens, FLOPs and wall-clock; --diff A B."""
    from rich.console import Console
    from rich.table import Table

    from lmlab.track import compare

    paths = list(runs) + ([str(p) for p in compare.find_runs(root, latest)] if latest else [])
    summaries = compare.compare(paths)
    console = Console(width=200)
    for note in compare.notes(summaries):
        console.print(f"note: {note}")
    unit = summaries[0].unit
    if diff_mode:
        if len(summaries) != 2:
            raise LmlabError(f"compare --diff: needs exactly 2 runs, got {len(summaries)}")
        by_path = {str(s.path): s for s in summaries}
        a, b = (by_path[str(Path(p))] for p in paths[:2])
        d = compare.diff(a, b, axis, force=force)
        table = Table("field", a.name, b.name, title="config differences")
        for k, (va, vb) in d["config"].items():
            table.add_row(k, repr(va), repr(vb))
        console.print(table)
        title = f"{compare.loss_label(unit)} aligned on {axis}"
        table = Table(axis, f"val {a.name}", f"val {b.name}", "b - a", title=title)
        for r in d["aligned"]:
            table.add_row(
                f"{r[axis]:,.0f}",
                f"{r['a']:.4f}",
                "-" if r["b"] is None else f"{r['b']:.4f}",
                "-" if r["b_minus_a"] is None else f"{r['b_minus_a']:+.4f}",
            )
        console.print(table)
        return
    rows = compare.table_rows(summaries)
    what = "loss" if unit == "token" else f"bits per {unit}"
    table = Table(*rows[0], title=f"runs ranked by best validation {what}")
    for r in rows[1:]:
        table.add_row(*r)
    console.print(table)
    from lmlab.track.plots import html_report, plot_curves

    out_dir = Path(out) if out else Path(summaries[0].path).parent / "compare"
    pngs = plot_curves(summaries, out_dir)
    report = html_report(summaries, pngs, out_dir / "report.html")
    click.echo(f"plots: {', '.join(str(p) for p in pngs.values())}\nreport: {report}")


@user_errors
def _ablate(base: str, swap: tuple[str, ...], seeds: int, match: str, out: str, **params) -> None:
    from rich.console import Console

    from lmlab.pipeline.ablate import markdown_table, run_ablation

    if params.pop("preset", None):
        raise LmlabError("ablate: the base preset is --base; --preset is not read here")
    where = placement(params)
    overrides = _study_overrides(params)
    with pending_is_not_an_error():
        report = run_ablation(
            base, list(swap), seeds=seeds, match=match, overrides=overrides, save_dir=out, placement=where
        )
    Console(width=200).print(markdown_table(report))
    _study_report([r for row in report["rows"] for r in row["runs"]], Path(out), "ablation.md")


def _study_overrides(params: dict) -> dict:
    """A study's settings for every run: its config folder < config file < flags."""
    from lmlab.config import deep_merge, read_config_sources

    files, _ = read_config_sources(params.pop("config_dir", None), params.pop("config", None))
    return deep_merge(files, collect_overrides(params))


def _study_report(runs: list[str], out: Path, table: str) -> None:
    """The compare report (PNGs + HTML) over a study's runs."""
    from lmlab.track import compare
    from lmlab.track.plots import html_report, plot_curves

    summaries = compare.compare(runs)
    pngs = plot_curves(summaries, out / "plots")
    click.echo(f"table: {out / table}\nreport: {html_report(summaries, pngs, out / 'report.html')}")


def _study_params(example: str, out: str, *own: click.Option) -> list[click.Option]:
    """A study command's options: its base preset, its own options, where it writes, how its runs are placed,
    and the config flags every run takes."""
    return [
        click.Option(["--base"], required=True, help=f"base preset, e.g. {example}"),
        *own,
        click.Option(["--out"], default=out, show_default=True, help="where runs and the report go"),
        *STUDY_OPTIONS,
        *COMMON,
    ]


ablate_command = cli.command(
    "ablate",
    cls=SchemaCommand,
    params=_study_params(
        "gpt2",
        "runs/ablate",
        click.Option(["--swap"], multiple=True, required=True, help="field=value, repeatable (pos=rope, ffn=swiglu)"),
        click.Option(["--seeds"], type=int, default=3, show_default=True, help="seeds per variant (>= 2)"),
        click.Option(
            ["--match"],
            type=click.Choice(["tokens", "time", "params", "flops"]),
            default="tokens",
            show_default=True,
            help="what the variants share",
        ),
    ),
    help="Each swap alone and all together vs the base, over seeds: mean +- 95% CI, difference, Welch p. "
    "Runs at laptop scale (4L-4H-128D, context 128, batch 16) unless flags say otherwise.",
)(_ablate)


@user_errors
def _scale(
    base: str,
    widths: str,
    tokens_per_param: float,
    swap: tuple[str, ...],
    seeds: int,
    mup: bool,
    bootstrap: int,
    out: str,
    **params,
) -> None:
    from lmlab.pipeline.scale import run_scaling

    if params.pop("preset", None):
        raise LmlabError("scale: the base preset is --base; --preset is not read here")
    try:
        sizes = [int(w) for w in widths.split(",") if w.strip()]
    except ValueError:
        raise LmlabError(
            f"scale --widths: '{widths}' is not a comma-separated list of integers (e.g. 32,48,64,96)"
        ) from None
    where = placement(params)
    overrides = _study_overrides(params)
    with pending_is_not_an_error():
        report = run_scaling(
            base,
            sizes,
            swaps=list(swap),
            tokens_per_param=tokens_per_param,
            seeds=seeds,
            mup=mup,
            overrides=overrides,
            save_dir=out,
            placement=where,
            bootstrap=bootstrap,
        )
    click.echo((Path(out) / "scale.md").read_text())
    click.echo(f"table: {Path(out) / 'scale.md'}\nplot: {report['plot']}")


scale_command = cli.command(
    "scale",
    cls=SchemaCommand,
    params=_study_params(
        "llama",
        "runs/scale",
        click.Option(["--widths"], required=True, help="comma-separated d_model of each rung, e.g. 32,48,64,96"),
        click.Option(
            ["--tokens-per-param"],
            type=float,
            default=20.0,
            show_default=True,
            help="tokens per non-embedding parameter for every rung (20: Chinchilla's ratio)",
        ),
        click.Option(["--swap"], multiple=True, help="field=value: a variant with its own ladder, repeatable"),
        click.Option(["--seeds"], type=int, default=2, show_default=True, help="seeds per rung"),
        click.Option(
            ["--mup"], is_flag=True, default=False, help="muP width scaling from the smallest width (init, lr, logits)"
        ),
        click.Option(["--bootstrap"], type=int, default=1000, show_default=True, help="refits for the 95% intervals"),
    ),
    help="A ladder of widths per variant, tokens in proportion to size: L(C) = E + A*C^-alpha fitted per variant "
    "with bootstrap intervals, the plot, and where the fits cross. Laptop scale like ablate unless flags say otherwise.",
)(_scale)


@user_errors
def _sweep(
    param: tuple[str, ...],
    sampler: str,
    trials: int | None,
    metric: str,
    out: str,
    storage: str | None,
    study_name: str,
    pruner: str | None,
    **params,
) -> None:
    from rich.console import Console

    from lmlab.pipeline.sweep import markdown_table, run_sweep

    preset = params.pop("preset", None)
    where = placement(params)
    with pending_is_not_an_error():
        report = run_sweep(
            preset,
            list(param),
            sampler=sampler,
            trials=trials,
            metric=metric,
            overrides=_study_overrides(params),
            save_dir=out,
            placement=where,
            storage=storage,
            study_name=study_name,
            pruner=pruner,
        )
    Console(width=200).print(markdown_table(report))
    _study_report([t["run"] for t in report["trials"]], Path(out), "sweep.md")


sweep_command = cli.command(
    "sweep",
    cls=SchemaCommand,
    params=[
        click.Option(
            ["--param"],
            multiple=True,
            required=True,
            help="FIELD=SPEC, repeatable: a,b,c | float:LO:HI | logfloat:LO:HI | int:LO:HI | logint:LO:HI",
        ),
        click.Option(["--sampler"], type=click.Choice(["grid", "random", "tpe"]), default="tpe", show_default=True),
        click.Option(["--trials"], type=int, default=None, help="number of trials (grid: default the full grid)"),
        click.Option(["--metric"], default="val_loss", show_default=True, help="final metric to minimise"),
        click.Option(["--out"], default="runs/sweep", show_default=True, help="where trial runs and the report go"),
        click.Option(
            ["--storage"],
            default=None,
            help="Optuna storage that several sweep processes share: journal:PATH (one machine or a shared file "
            "system) or an RDB URL (sqlite:///sweep.db, postgresql://...); default a journal in --out",
        ),
        click.Option(["--study-name"], default="sweep", show_default=True, help="the study's name in the storage"),
        click.Option(
            ["--pruner"],
            type=click.Choice(["median", "hyperband"]),
            default=None,
            help="stop trials early from the validation losses they report at each evaluation",
        ),
        *STUDY_OPTIONS,
        *COMMON,
    ],
    help="Hyperparameter search with Optuna over any config field; each trial is a run directory, "
    "results in sweep.md and the compare report.",
)(_sweep)


@cli.command("board")
@click.argument("save_dir", required=False, default="runs")
@click.option("--aim", "viewer", flag_value="aim", help="open the shared Aim repo (<save_dir>/.aim)")
@click.option("--tensorboard", "viewer", flag_value="tensorboard", help="open TensorBoard on <save_dir>/tb")
@click.option("--port", type=int, default=None, help="the viewer's port (its own default otherwise)")
@click.option("--print", "print_only", is_flag=True, help="print the viewer's command instead of starting it")
@user_errors
def board_cmd(save_dir: str, viewer: str | None, port: int | None, print_only: bool) -> None:
    """Watch and compare every run under SAVE_DIR (default runs) in TensorBoard or Aim."""
    import shlex
    import subprocess

    from lmlab.track.board import find_viewer, viewer_command

    argv = viewer_command(save_dir, viewer, port)
    executable = find_viewer(argv[0])
    if print_only or executable is None:
        if not print_only:
            click.echo(f'{argv[0]} is not installed; install it with: pip install "lmlab[track]", then run:', err=True)
        click.echo(shlex.join(argv))
        return
    click.echo(f"starting: {shlex.join(argv)}", err=True)
    sys.exit(subprocess.call([executable, *argv[1:]]))


@cli.command("inspect")
@click.option("--run", "run_path", required=True, help="a run directory")
@click.option("--prompt", required=True, help="text to run through the model")
@click.option("--out", default=None, help="where the maps and tables go (default: the run's eval/inspect)")
@click.option("--top", type=int, default=5, show_default=True, help="tokens per layer and position in the lens")
@user_errors
def inspect_cmd(run_path: str, prompt: str, out: str | None, top: int) -> None:
    """Attention maps per layer and head (PNG), a logit lens and per-layer activation and gradient norms."""
    import torch

    from lmlab.errors import ConfigError
    from lmlab.infer.inspect import write_inspection
    from lmlab.infer.load import load_run
    from lmlab.model.inspect import inspect_model

    loaded = load_run(run_path)
    ids = loaded.tokenizer.encode(prompt)
    context = loaded.config.model.max_seq_len
    if not ids:
        raise ConfigError("inspect --prompt: the prompt encodes to no tokens; allowed: any non-empty text")
    ids = ids[-(context + 1) :]  # the last full context, plus the token the last position predicts
    decode = lambda i: loaded.tokenizer.decode([i])  # noqa: E731
    insp = inspect_model(loaded.model, torch.tensor([ids]), decode, top=top)
    folder = Path(out) if out else loaded.run.eval / "inspect"
    for written in write_inspection(insp, folder):
        click.echo(f"wrote {written}")
    if insp.no_attention:
        click.echo(f"no attention maps: {insp.no_attention}")


@cli.command("replay")
@click.argument("run")
@click.option("--steps", type=int, default=20, show_default=True, help="compare the losses logged up to this step")
@click.option("--rtol", type=float, default=1e-5, show_default=True, help="relative tolerance per loss")
@click.option("--out", default=None, help="keep the replayed run here (default: a temporary folder)")
@user_errors
def replay_cmd(run: str, steps: int, rtol: float, out: str | None) -> None:
    """Re-run RUN from its recorded config and data fingerprint; check its first losses match."""
    from lmlab.pipeline.replay import replay

    result = replay(run, steps=steps, rtol=rtol, save_dir=out)
    for r in result["rows"]:
        click.echo(
            f"step {r['step']:>6}  recorded {r['recorded']:.6f}  replayed {r['replayed']:.6f}  diff {r['diff']:+.2e}"
        )
    if not result["ok"]:
        click.echo(f"error: {result['message']}", err=True)
        sys.exit(1)
    click.echo(result["message"])


cli.add_command(reference_group)
cli.add_command(study_group)


def main() -> None:
    """Entry point of `lmlab`."""
    cli(prog_name="lmlab")


def exp_train() -> None:
    """Entry point of `exp-train`, an alias of `lmlab train`."""
    train_command(prog_name="exp-train")


def exp_eval() -> None:
    """Entry point of `exp-eval`, an alias of `lmlab eval`."""
    eval_command(prog_name="exp-eval")
