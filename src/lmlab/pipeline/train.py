"""`lmlab train` end to end: config -> data -> model -> MiniTrainer -> run directory -> samples."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmlab.config import RunConfig, changed_fields
from lmlab.data.datasets import RandomWindowLoader, SequentialLoader, document_starts, prepare_data, separator_id
from lmlab.data.tokenizers.base import BaseTokenizer, load_tokenizer, save_tokenizer
from lmlab.errors import CheckpointError, ProcessLostError, RunLockedError
from lmlab.model.build import build_model
from lmlab.model.cost import cost_card, param_counts
from lmlab.optim import build_optimizer
from lmlab.registry import TRACKER
from lmlab.runs import checkpoint as ckpt
from lmlab.runs.checkpoint import load_weights, read_weights
from lmlab.runs.lock import RunLock
from lmlab.runs.run_dir import RunDir
from lmlab.track.run_log import RunLog
from lmlab.trainer.callbacks import Callback, EarlyStopping, LayerStats, ProgressBar
from lmlab.trainer.mini_trainer import MiniTrainer, causal_lm_loss
from lmlab.trainer.schedules import warmup_cosine_scheduler
from lmlab.utils import dist


@dataclass
class TrainResult:
    """Where the run went, its last metrics and the samples printed at the end."""

    run: RunDir
    metrics: dict
    samples: list[str]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resume_target(cfg: RunConfig) -> RunDir | None:
    resume = cfg.train.resume
    if resume is None:
        return None
    if resume == "auto":
        return RunDir.latest(cfg.train.save_dir, cfg.train.run_tag)
    path = Path(resume)
    if (path / "meta.json").is_file() and path.parent.name == "checkpoints":  # a checkpoint folder
        path = path.parents[2]
    return RunDir.open(path)


def check_same_architecture(saved: RunConfig, current: RunConfig, where: Path) -> None:
    """Refuse to resume into a run whose model or optimizer differs, naming the mismatched fields."""
    a, b = saved.model.model_dump(), current.model.model_dump()
    diff = [
        f"{k} ({a[k]!r} in run, {b[k]!r} now)"
        for k in a
        if a[k] != b[k] and k not in ("vocab_size", "src_vocab_size", "attn_backend")
    ]
    if diff:
        raise CheckpointError(f"resume: {where} has a different architecture: model." + ", model.".join(diff))
    if saved.train.optim != current.train.optim:  # another optimizer's state cannot continue this one's steps
        raise CheckpointError(
            f"resume: {where} was trained with train.optim={saved.train.optim}, not {current.train.optim}; "
            f"allowed: {saved.train.optim}, or train.init_from to start {current.train.optim} from its weights"
        )


def sample_text(model, tokenizer: BaseTokenizer, *, n: int, tokens: int, seed: int, prompt: str = "\n") -> list[str]:
    """`n` samples of `tokens` tokens from `prompt` (temperature 0.8, top-k 40); none when either is 0."""
    if not n or not tokens:
        return []
    try:
        ids = tokenizer.encode(prompt)
    except Exception:
        ids = [0]
    device = next(model.parameters()).device
    x = torch.tensor([ids or [0]], device=device)
    out = []
    for i in range(n):
        y = model.generate(x, tokens, temperature=0.8, top_k=40, seed=seed + i)
        out.append(tokenizer.decode(y[0].tolist()))
    return out


@dataclass
class _Task:
    """What differs between a language-model run and an encoder-decoder run."""

    cfg: RunConfig  # with the vocabulary sizes filled in from the tokenizer(s)
    meta: dict  # meta/data.json: the data fingerprint
    summary: str
    save_tokenizers: Callable[[RunDir], None]
    loaders: Callable[[int, int], tuple]
    sample: Callable[[torch.nn.Module], list[str]]
    loss_fn: Callable = causal_lm_loss


def _lm_task(cfg: RunConfig, run: RunDir | None) -> _Task:
    tc = cfg.train
    source = run or (RunDir.open(cfg.train.init_from) if cfg.train.init_from else None)
    _corpus, tokenizer, splits = prepare_data(cfg.data, load_tokenizer(source.tokenizer) if source else None)
    # A saved model may have more ids than its tokenizer (a padded vocabulary): its size wins.
    vocab = source.config().model.vocab_size if source else tokenizer.vocab_size
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": vocab})})
    seq_len = cfg.seq_len
    loss_fn = causal_lm_loss
    if cfg.data.doc_mask:
        loss_fn = functools.partial(causal_lm_loss, doc_sep=separator_id(tokenizer, "data.doc_mask"))

    def loaders(rank: int, world: int) -> tuple:
        split = {"rank": rank, "world": world, "accum": tc.grad_accum}
        if cfg.data.sampling == "sequential":
            train = SequentialLoader(splits.train, tc.batch_size, seq_len, **split)
        else:
            starts = document_starts(splits.train, tokenizer) if cfg.data.align_bos else None
            train = RandomWindowLoader(splits.train, tc.batch_size, seq_len, seed=tc.seed, starts=starts, **split)
        val = RandomWindowLoader(splits.val, tc.batch_size, seq_len, seed=tc.seed + 1, **split)
        train_eval = RandomWindowLoader(splits.train, tc.batch_size, seq_len, seed=tc.seed + 2, **split)
        return train, val, train_eval

    return _Task(
        cfg,
        splits.meta,
        f"{splits.meta['n_train']:,} train tokens",
        lambda r: save_tokenizer(tokenizer, r.tokenizer),
        loaders,
        lambda m: sample_text(m, tokenizer, n=tc.num_samples, tokens=tc.sample_tokens, seed=tc.seed),
        loss_fn,
    )


def _seq2seq_task(cfg: RunConfig, run: RunDir | None) -> _Task:
    from lmlab.data.pairs import PairLoader, prepare_pairs, to_torch
    from lmlab.infer.decoding import greedy_decode
    from lmlab.model.seq2seq import seq2seq_loss
    from lmlab.text.pairs import make_batch

    tc = cfg.train
    saved = (load_tokenizer(run.src_tokenizer), load_tokenizer(run.tokenizer)) if run is not None else None
    data = prepare_pairs(cfg, saved)
    sizes = {"vocab_size": data.tgt.vocab_size, "src_vocab_size": data.src.vocab_size}
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=sizes)})

    def save(r: RunDir) -> None:
        save_tokenizer(data.src, r.src_tokenizer)
        save_tokenizer(data.tgt, r.tokenizer)

    def loaders(rank: int, world: int) -> tuple:
        if world > 1:
            raise CheckpointError("train: arch=seq2seq runs in one process; distributed pair batches are not supported")
        val = PairLoader(data.val, tc.batch_size, shuffle=False, restart=True)
        train_eval = PairLoader(data.train, tc.batch_size, seed=tc.seed + 2)
        return PairLoader(data.train, tc.batch_size, seed=tc.seed), val, train_eval

    def sample(model: torch.nn.Module) -> list[str]:
        pairs = data.val_pairs[: tc.num_samples]
        if not pairs or not tc.sample_tokens:
            return []
        device = next(model.parameters()).device
        batch = to_torch(make_batch(data.val[: len(pairs)]))
        hyps = greedy_decode(
            model, batch["X_ids"].to(device), batch["M_src"].to(device), max_len=cfg.model.max_seq_len - 1
        )
        return [f"{s}\n-> {data.tgt.decode(h)}\n(reference: {t})" for (s, t), h in zip(pairs, hyps, strict=True)]

    summary = f"{data.meta['n_train']:,} train pairs, vocab {data.src.vocab_size} -> {data.tgt.vocab_size}"
    return _Task(cfg, data.meta, summary, save, loaders, sample, seq2seq_loss)


def train_from_config(cfg: RunConfig, *, callbacks: Sequence[Callback] = (), quiet: bool = False) -> TrainResult:
    """Train the model `cfg` describes on its corpus, leaving a complete run directory."""
    tc = cfg.train
    dist.init_distributed()
    seed_everything(tc.seed)  # identical on every rank: FSDP shards each rank's own initialisation
    with contextlib.ExitStack() as held:  # the run's lock, released however training ends
        task, run, resume, saved = _open_run(cfg, held)
        try:
            return _train(task, run, resume, saved, callbacks, quiet)
        except RuntimeError as exc:
            if not dist.lost_peer(exc):
                raise
            last = ckpt.latest_valid(run.checkpoints)
            kept = f"{last.name} is the last checkpoint, intact" if last else "no checkpoint was written yet"
            raise ProcessLostError(
                f"train: another process of the group stopped ({dist.first_line(exc)}); {kept}; "
                "run the same command on every node to resume"
            ) from None


def _train(
    task: _Task, run: RunDir, resume: str | None, saved: RunConfig | None, callbacks: Sequence[Callback], quiet: bool
) -> TrainResult:
    cfg, model_cfg = task.cfg, task.cfg.model
    tc = cfg.train
    model = build_model(model_cfg)
    if tc.init_from and resume is None:  # fine-tuning: the config above is already the source's
        weights = RunDir.open(tc.init_from).final_weights()
        load_weights(model, read_weights(weights), weights)
    seed_everything(tc.seed + dist.get_rank())  # per-rank dropout; the loaders carry their own data seed
    optimizer = build_optimizer(model, tc)
    train_loader, val_loader, train_eval_loader = task.loaders(dist.get_rank(), dist.get_world_size())
    trainer = MiniTrainer.from_config(
        tc,
        model,
        optimizer,
        loss_fn=task.loss_fn,
        train_loader=train_loader,
        val_loader=val_loader,
        scheduler=lambda opt: _scheduler(tc, opt, len(train_loader)),
        train_eval_loader=train_eval_loader,
        callbacks=[*_callbacks(cfg, run, quiet), *([ResumeRecord(run, saved, cfg)] if saved else []), *callbacks],
        ckpt_dir=run.checkpoints,
        resume=resume,
    )
    if dist.is_main():  # which GPU defaults took effect (the config holds what was asked for)
        (run.meta / "kernels.json").write_text(json.dumps(trainer.kernels))
    if dist.is_main() and not quiet:
        print(
            f"run {run.path} | {model_cfg.arch_name()} | {model.num_params():,} params | "
            f"{task.summary} | device {trainer.device} {trainer.precision}"
        )
        if model_cfg.arch != "seq2seq":  # what each component costs, as `lmlab arch` prints it
            print(cost_card(model_cfg, cfg.seq_len))
    return _finish(task, run, trainer, trainer.train())


def _hold(run: RunDir, held: contextlib.ExitStack) -> None:
    """Rank 0 takes the run's lock (the one writer) until `held` closes; every rank raises the refusal when it
    could not."""
    refusal = ""
    if dist.is_main():
        try:
            held.enter_context(RunLock(run.path).acquire())
        except RunLockedError as exc:
            refusal = str(exc)
    refusal = dist.all_gather_object(refusal)[0]
    if refusal:
        raise RunLockedError(refusal)


def _open_run(cfg: RunConfig, held: contextlib.ExitStack) -> tuple[_Task, RunDir, str | None, RunConfig | None]:
    """The task, the run directory (new, resumed or fine-tuned from another), what to resume from, and the
    config the run had before (a resume); the run's lock goes into `held` before any file of it changes."""
    run = _resume_target(cfg)
    if run is not None:
        _hold(run, held)
    tc = cfg.train
    if run is None and tc.init_from:
        # Fine-tuning continues the source's architecture and tokenizer; only dropout is this run's own.
        source = RunDir.open(tc.init_from).config()
        model = source.model.model_copy(update={"dropout": cfg.model.dropout})
        cfg = cfg.model_copy(
            update={"model": model, "data": cfg.data.model_copy(update={"tokenizer": source.data.tokenizer})}
        )
    saved = run.config() if run is not None else None
    if run is not None:
        cfg = fit_world(cfg, saved, run, tc.resume)
    task = _seq2seq_task(cfg, run) if cfg.model.arch == "seq2seq" else _lm_task(cfg, run)
    if run is not None:
        check_same_architecture(saved, task.cfg, run.path)
        if dist.is_main():
            keep_config_files(run, task.cfg.sources, f"resume_{len(run.resumes()) + 1:02d}")
        resume = tc.resume if tc.resume != "auto" and Path(tc.resume).name.startswith("step_") else "auto"
        return task, run, resume, saved
    run = RunDir.create(tc.save_dir, tc.run_tag) if dist.is_main() else None
    run = RunDir(Path(dist.all_gather_object(str(run.path) if run else "")[0]))  # rank 0 names the run
    _hold(run, held)  # before the run is complete, so a resume of it waits for this process
    if dist.is_main():
        task.save_tokenizers(run)
        meta = {"data.json": task.meta, "params.json": param_counts(task.cfg.model)}
        keep_config_files(run, task.cfg.sources)
        run.write_meta(task.cfg, meta)  # last: marks the run complete
    return task, run, None, None


def split_batch(batch: int, accum: int, world_then: int, world_now: int) -> tuple[int, int] | None:
    """(batch, grad_accum) that keep the global batch of `batch x accum x world_then` rows on `world_now`
    processes, with micro-batches no larger than `batch`; None when the rows do not split over the processes."""
    rows = batch * accum * world_then
    if rows % world_now:
        return None
    per_rank = rows // world_now
    for steps in range(-(-per_rank // batch), per_rank + 1):
        if per_rank % steps == 0:
            return per_rank // steps, steps
    return None  # unreachable: steps == per_rank always divides


def fit_world(cfg: RunConfig, saved: RunConfig, run: RunDir, resume: str) -> RunConfig:
    """The config to resume `run` with at this world size: when the checkpoint was written by another number of
    processes, batch and grad_accum are re-split so the global batch stays (one line says how, or what changes)."""
    folder = Path(resume) if resume != "auto" and Path(resume).name.startswith("step_") else None
    if folder is None:
        listed = ckpt.list_checkpoints(run.checkpoints)
        folder = listed[-1] if listed else None
    layout = ckpt.read_meta(folder) if folder is not None and (folder / "meta.json").is_file() else {}
    then, now = layout.get("world_size"), dist.get_world_size()
    if then is None or then == now:
        return cfg
    tc, before = cfg.train, saved.train
    batch, accum = layout.get("batch_size") or before.batch_size, layout.get("grad_accum", before.grad_accum)
    rows = batch * accum * then
    asked = (tc.batch_size, tc.grad_accum) != (before.batch_size, before.grad_accum)  # the user chose a split
    split = (tc.batch_size, tc.grad_accum) if asked else split_batch(batch, accum, then, now)
    head = f"resume: {folder.name} was written by {then} processes, now {now}:"
    if split is None:
        split = batch, accum
        line = f"{head} a global batch of {rows} rows does not split over {now}; it becomes {batch * accum * now}"
    elif split[0] * split[1] * now != rows:
        line = f"{head} the global batch changes from {rows} to {split[0] * split[1] * now} rows (as asked)"
    else:
        line = f"{head} the global batch of {rows} rows stays (batch {split[0]}, grad_accum {split[1]} per process)"
    if dist.is_main():
        print(f"{line}; dropout masks are drawn anew per process", file=sys.stderr)
    train = tc.model_copy(update={"batch_size": split[0], "grad_accum": split[1]})
    return cfg.model_copy(update={"train": train})


def keep_config_files(run: RunDir, sources: Sequence[str], subfolder: str = "") -> None:
    """Copy every config file the run was given, verbatim and in precedence order, into meta/config_files/
    (a resume's into meta/config_files/resume_NN/)."""
    folder = run.meta / "config_files" / subfolder
    for i, source in enumerate(sources):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / f"{i:02d}_{Path(source).name}")


def config_changes(before: RunConfig, after: RunConfig) -> dict[str, list]:
    """{dotted field: [before, after]} for every field whose value differs."""
    changed = changed_fields(before.model_dump(mode="json"), after.model_dump(mode="json"))
    return {k: list(pair) for k, pair in changed.items()}


class ResumeRecord(Callback):
    """On a resume: say where training continues, append it to meta/resumes.jsonl, rewrite full_config.json."""

    def __init__(self, run: RunDir, saved: RunConfig, cfg: RunConfig) -> None:
        self.run, self.saved, self.cfg = run, saved, cfg

    def on_train_start(self, trainer) -> None:
        """Runs after the trainer has loaded its checkpoint, so the step is known."""
        if not dist.is_main():
            return
        if trainer.resumed_from is not None:
            print(f"resuming {self.run.path} at step {trainer.step} from {trainer.resumed_from}", file=sys.stderr)
        record = {
            "step": trainer.step,
            "checkpoint": str(trainer.resumed_from) if trainer.resumed_from else None,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "changed": config_changes(self.saved, self.cfg),
        }
        self.run.record_resume(self.cfg, record)


def _scheduler(tc, optimizer, loader_len: int):
    """Warmup then cosine decay to min_lr over the planned steps."""
    total = MiniTrainer.plan_steps(loader_len, tc.grad_accum, epochs=tc.epochs, max_steps=tc.max_steps)
    min_ratio = (tc.min_lr if tc.min_lr is not None else tc.lr / 10) / tc.lr
    return warmup_cosine_scheduler(
        optimizer, warmup=tc.warmup_steps, decay_steps=tc.decay_steps or total, min_ratio=min_ratio
    )


def _callbacks(cfg: RunConfig, run: RunDir, quiet: bool) -> list[Callback]:
    """The run's trackers and progress bar (rank 0 only), and early stopping."""
    cbs: list[Callback] = []
    if cfg.train.inspect_interval:  # every rank takes part (FSDP's forward gathers); before the trackers read it
        cbs.append(LayerStats(cfg.train.inspect_interval))
    if dist.is_main():
        cbs += [TRACKER.get(name).for_run(run, cfg) for name in cfg.track.trackers]
        if cfg.model.arch != "seq2seq":
            cbs.append(RunLog.for_run(run, cfg))
        if cfg.train.progress and not quiet:
            cbs.append(ProgressBar(cfg.train.log_interval))
    if cfg.train.early_stopping:
        cbs.append(EarlyStopping(cfg.train.early_stopping))
    return cbs


def _finish(task: _Task, run: RunDir, trainer: MiniTrainer, metrics: dict) -> TrainResult:
    """Final weights, samples and metrics into the run directory (nothing after an interrupt)."""
    main = dist.is_main()
    if metrics.get("stopped") and main and not metrics.get("interrupted"):
        print(f"stopped: {metrics['stopped']}", file=sys.stderr)
    if metrics.get("interrupted"):  # the checkpoint is the state to resume; no export, no samples
        return TrainResult(run, metrics, [])
    final_weights = trainer.full_state_dict()  # collective under FSDP
    if not main:
        return TrainResult(run, metrics, [])
    model_cfg = task.cfg.model
    run.write_final(final_weights, model_cfg.model_dump(mode="json"))
    if metrics.get("already_complete"):  # the export above completes a run killed after its last checkpoint
        return TrainResult(run, metrics, [])
    model = trainer.raw_model
    if trainer.strategy == "fsdp":  # sample from an unsharded copy: rank 0 alone cannot run a sharded forward
        model = build_model(model_cfg).to(trainer.device)
        load_weights(model, {k: v.to(trainer.device) for k, v in final_weights.items()}, run.export)
    samples = task.sample(model)
    if samples:
        (run.eval / "samples.txt").write_text("\n\n-----\n\n".join(samples))
    (run.eval / "final_metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(run, metrics, samples)
