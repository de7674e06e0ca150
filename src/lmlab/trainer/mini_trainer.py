"""MiniTrainer: a small, complete training loop.

Gradient accumulation (with DDP/FSDP gradient sync only on the last micro-step), clipping, AMP,
evaluation, crash-safe checkpoints with exact resume (weights, optimizer, scheduler, GradScaler,
every RNG on every rank, data position), non-finite detection, throughput and MFU.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmlab.config import TrainConfig
from lmlab.errors import CheckpointError, ConfigError, MemoryBudgetError
from lmlab.runs import checkpoint as ckpt
from lmlab.trainer import distributed as wrap
from lmlab.trainer import optim
from lmlab.trainer.callbacks import Callback, as_callback
from lmlab.utils import dist
from lmlab.utils.hardware import autocast_dtype, peak_flops, resolve_device, resolve_precision
from lmlab.utils.meters import AverageMeter, ThroughputMeter, peak_memory_bytes


def causal_lm_loss(model: nn.Module, batch: Any, *, doc_sep: int | None = None) -> torch.Tensor:
    """Next-token loss of an (x, y) batch, plus the model's auxiliary loss if it returns one; with `doc_sep`,
    attention stays within the documents that separator ends (document masking)."""
    x, y = batch
    out = model(x, targets=y) if doc_sep is None else model(x, targets=y, doc_sep=doc_sep)
    return out.loss if out.aux_loss is None else out.loss + out.aux_loss


def as_model_loss(loss_fn: Callable) -> Callable[[nn.Module, Any], torch.Tensor]:
    """The trainer's `(model, batch) -> loss` from any of the three forms a loss comes in.

    - a function whose first parameter is named `model` (or annotated as a module) takes `(model, batch)`;
    - a loss module (`nn.CrossEntropyLoss()`) or any other two-argument function is a criterion
      `(logits, targets)`, given them flattened as `nn.CrossEntropyLoss` takes them, (N, V) and (N,),
      for an `(x, y)` batch; the model's auxiliary loss (MoE) is added to it.
    """
    if not isinstance(loss_fn, nn.Module):
        first = next(iter(inspect.signature(loss_fn).parameters.values()), None)
        annotation = getattr(first, "annotation", None)
        if first is not None and (
            first.name == "model" or (isinstance(annotation, type) and issubclass(annotation, nn.Module))
        ):
            return loss_fn
    return functools.partial(_criterion_loss, loss_fn)


def _criterion_loss(criterion: Callable, model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    out = model(x)
    logits = getattr(out, "logits", out)
    loss = criterion(logits.flatten(0, -2), y.flatten())
    aux = getattr(out, "aux_loss", None)
    return loss if aux is None else loss + aux


def rng_state() -> dict:
    """Every RNG the loop touches, as plain lists and numbers (picklable across ranks, loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _reseed(state: dict, rank: int) -> None:
    """Seed every RNG from a draw of the saved torch generator `state` plus `rank`: reproducible, distinct per rank."""
    generator = torch.Generator()
    generator.set_state(torch.tensor(state["torch"], dtype=torch.uint8))
    seed = int(torch.randint(2**62, (1,), generator=generator)) + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state`."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


@dataclass
class StepResult:
    """What one optimizer step measured: its mean loss, gradient norm, tokens, and whether it was applied.

    `loss` and `grad_norm` stay 0-dim tensors on the device (reading one waits for the device); `finite` is a
    bool when the non-finite policy needed the host to decide, else a device tensor too.
    """

    loss: torch.Tensor | float = 0.0
    grad_norm: torch.Tensor | float = 0.0
    n_tokens: int = 0
    seq_len: int = 0
    data_wait: float = 0.0
    finite: torch.Tensor | bool = True


class IntervalSums:
    """What a log step reports about the steps since the last one.

    Loss and gradient-norm sums over the finite steps, and the skipped steps, stay on the device so that a
    step never waits for the host; `read` brings them over in one transfer. The steps, tokens, FLOPs and
    training seconds (evaluations and checkpoint writes excluded) of this process are host numbers.
    """

    FIELDS = ("loss", "grad_norm", "finite_steps", "skipped")

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(self.FIELDS), device=device)
        self.steps, self.tokens, self.flops, self.paused, self.t0 = 0, 0, 0.0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, finite: torch.Tensor | bool) -> None:
        """Count one step (its loss and norm only if it was finite: a NaN must not poison the interval)."""
        ok = torch.as_tensor(finite, device=self.sums.device)
        zero = self.sums.new_zeros(())
        loss, grad_norm = loss.to(self.sums), grad_norm.to(self.sums)
        self.sums += torch.stack(
            [torch.where(ok, loss, zero), torch.where(ok, grad_norm, zero), ok.float(), (~ok).float()]
        )

    def read(self, restart: bool = True) -> dict[str, float]:
        """The interval's sums as Python numbers (the one host sync of a log step) and its training seconds;
        with `restart` the next interval begins (a run stopped mid-interval keeps it open for its resume)."""
        values = dict(zip(self.FIELDS, self.sums.tolist(), strict=True))
        now = time.perf_counter()
        values |= {"steps": self.steps, "tokens": self.tokens, "flops": self.flops}
        values["seconds"] = now - self.t0 - self.paused
        if restart:
            self.sums.zero_()
            self.steps, self.tokens, self.flops, self.paused, self.t0 = 0, 0, 0.0, 0.0, now
        return values

    @contextlib.contextmanager
    def pause(self):
        """Time inside is not training time (an evaluation, a checkpoint write)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - t

    def state_dict(self) -> list[float]:
        """The open interval's device sums, for a checkpoint (a resume mid-interval logs the same mean)."""
        return self.sums.tolist()

    def load_state_dict(self, state: list[float]) -> None:
        """Inverse of `state_dict`."""
        self.sums.copy_(torch.tensor(state, dtype=self.sums.dtype))


def _cycle(loader: Iterable) -> Iterator:
    """The loader's batches, epoch after epoch; ends only if two epochs in a row yield none.

    One empty pass is normal: a loader left at the end of its epoch by the last evaluation
    finishes that epoch first.
    """
    empty_passes = 0
    while empty_passes < 2:
        empty_passes += 1
        for batch in loader:
            empty_passes = 0
            yield batch


OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _to_device(batch: Any, device: torch.device, pin: bool = False) -> Any:
    """`batch` on `device`; with `pin`, host tensors go through pinned memory, so the copy overlaps compute."""
    if isinstance(batch, torch.Tensor):
        if pin and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device, pin) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, pin) for k, v in batch.items()}
    return batch


def _first_tensor(batch: Any) -> torch.Tensor | None:
    first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()), None)
    return first if isinstance(first, torch.Tensor) else None


class MiniTrainer:
    """Trains `model` for `max_steps` optimizer steps or `epochs` passes over `train_loader` (whichever ends first).

    `scheduler` is an LR scheduler or a function `optimizer -> scheduler`; a function is called with the
    optimizer that actually steps, which ZeRO-1 and FSDP replace with their own.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] = causal_lm_loss,
        train_loader: Iterable | None = None,
        val_loader: Iterable | None = None,
        *,
        epochs: float | None = None,
        max_steps: int | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        grad_accum: int = 1,
        clip_grad: float | None = 1.0,
        scheduler: Any = None,
        callbacks: Sequence[Callback] = (),
        train_eval_loader: Iterable | None = None,
        ckpt_dir: str | Path | None = None,
        eval_interval: int | None = None,
        eval_iters: int = 20,
        ckpt_interval: int | None = None,
        keep_last: int = 2,
        resume: str | Path | None = None,
        distributed: str = "none",
        compile: bool = False,
        activation_checkpointing: str = "none",
        ac_every: int = 2,
        nonfinite: str = "skip",
        peak_flops_override: float | None = None,
        max_time: float | None = None,
        fused_adamw: str = "auto",
        tf32: bool = True,
        pin_memory: bool = True,
        deterministic: bool = False,
        log_interval: int = 1,
    ) -> None:
        if train_loader is None:
            raise ValueError("train_loader is required")
        if max_steps is None and epochs is None:
            raise ValueError("set max_steps or epochs")
        self._place(
            model, optimizer, scheduler, device, precision, distributed, compile, activation_checkpointing, ac_every
        )
        self._cuda_defaults(fused_adamw, tf32, pin_memory, deterministic)
        self.loss_fn, self.train_loader, self.val_loader = as_model_loss(loss_fn), train_loader, val_loader
        # its own draws over the training split, so measuring it never moves the training data order
        self.train_eval_loader = train_eval_loader
        self.grad_accum, self.clip_grad, self.nonfinite = grad_accum, clip_grad, nonfinite
        self.callbacks = [as_callback(cb) for cb in callbacks]
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.eval_iters, self.keep_last, self.resume = eval_iters, keep_last, resume
        self.total_steps = self.plan_steps(
            len(train_loader) if epochs is not None else 0, grad_accum, epochs=epochs, max_steps=max_steps
        )
        self.eval_interval = eval_interval or self.total_steps
        self.ckpt_interval = ckpt_interval or self.eval_interval
        self.peak = peak_flops(self.device, self.precision, override=peak_flops_override)
        self.max_time, self.log_interval = max_time, log_interval  # losses are read back once per log interval
        self._reset_progress()

    def _place(self, model, optimizer, scheduler, device, precision, distributed, compile, ac_mode, ac_every) -> None:
        """Device, precision, activation checkpointing, DDP/FSDP and compile, in torchtitan's order."""
        if isinstance(device, str) and device == "auto" and torch.cuda.is_available() and dist.get_world_size() > 1:
            device = f"cuda:{dist.get_local_rank()}"
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.precision = resolve_precision(precision, self.device)
        self.strategy = wrap.resolve_strategy(distributed)
        self.raw_model = model.to(self.device)
        wrap.apply_activation_checkpointing(self.raw_model, ac_mode, ac_every)
        self.model: nn.Module = self.raw_model
        if self.strategy in ("ddp", "zero1"):
            self.model = wrap.wrap_ddp(self.raw_model, self.device)
        if self.strategy in ("zero1", "fsdp"):
            if not getattr(optimizer, "shardable", True):
                raise ConfigError(
                    f"train.distributed: {self.strategy} splits parameters or their states across ranks, which "
                    f"{type(optimizer).__name__} cannot step on a part of; allowed: ddp, none"
                )
            if self.strategy == "zero1":
                optimizer = wrap.wrap_zero1(optimizer)
            else:
                optimizer = wrap.wrap_fsdp(self.raw_model, optimizer)
            if scheduler is not None and not callable(scheduler):
                scheduler.optimizer = optimizer  # an object built on the optimizer before it was wrapped
        if callable(scheduler) and not hasattr(scheduler, "state_dict"):
            scheduler = scheduler(optimizer)  # a factory: the schedule is built on the optimizer that steps
        self._eager = self.model
        self.compiled = compile
        if compile:
            self.model = wrap.compile_model(self.model)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _cuda_defaults(self, fused_adamw: str, tf32: bool, pin_memory: bool, deterministic: bool) -> None:
        """What GPU users expect, each switchable (`train.fused_adamw`, `tf32`, `pin_memory`, `deterministic`);
        `self.kernels` records what took effect."""
        cuda = self.device.type == "cuda"
        self.pin_memory = pin_memory and cuda
        fused = optim.use_fused(self.optimizer, fused_adamw)
        tf32_on = tf32 and cuda and torch.cuda.get_device_capability(self.device)[0] >= 8  # Ampere or newer
        if tf32_on:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if deterministic:
            # cuBLAS reads its workspace setting when it first runs; the trainer is built before any matmul
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.kernels = {
            "fused_adamw": fused,
            "tf32": tf32_on,
            "pin_memory": self.pin_memory,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
        }

    @property
    def device_skip(self) -> bool:
        """Whether a non-finite step is skipped on the device: a fused Adam skips when told so (`found_inf`, the
        path GradScaler uses); other optimizers, `stop` and fp16 (whose scaler owns found_inf) need the host."""
        return self.kernels["fused_adamw"] and self.precision != "fp16" and self.nonfinite == "skip"

    def _reset_progress(self) -> None:
        self.step = self.start_step = self.epoch = 0
        self.tokens_seen = self.skipped_steps = 0
        self.flops_seen = 0.0
        self.wall_before, self._t_start = 0.0, None  # training seconds of earlier processes (resumes) and now
        self.best_val = math.inf
        self.best_ckpt: Path | None = None
        self.last_val: float | None = None
        self.should_stop: str | None = None  # set (with the reason) by callbacks or the non-finite policy
        self.resumed_from: Path | None = None
        self.interrupted = False  # set by the first Ctrl-C: the step finishes, a checkpoint is written
        self._saved_step: int | None = None
        self.loss_meter = AverageMeter()
        self.throughput = ThroughputMeter()
        self.interval = IntervalSums(self.device)

    @classmethod
    def from_config(
        cls,
        cfg: TrainConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] = causal_lm_loss,
        train_loader: Iterable | None = None,
        val_loader: Iterable | None = None,
        **runtime: Any,
    ) -> MiniTrainer:
        """A trainer with every setting of `cfg` (the `train` section); `runtime` adds what a config cannot hold
        (scheduler, callbacks, ckpt_dir, resume) or overrides a setting."""
        settings = dict(
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            device=cfg.device,
            precision=cfg.precision,
            grad_accum=cfg.grad_accum,
            clip_grad=cfg.clip_grad,
            eval_interval=cfg.eval_interval,
            eval_iters=cfg.eval_iters,
            ckpt_interval=cfg.ckpt_interval,
            keep_last=cfg.keep_last,
            distributed=cfg.distributed,
            compile=cfg.compile,
            activation_checkpointing=cfg.activation_checkpointing,
            ac_every=cfg.ac_every,
            nonfinite=cfg.nonfinite,
            peak_flops_override=cfg.peak_flops,
            max_time=cfg.max_time,
            fused_adamw=cfg.fused_adamw,
            tf32=cfg.tf32,
            pin_memory=cfg.pin_memory,
            deterministic=cfg.deterministic,
            log_interval=cfg.log_interval,
        )
        return cls(model, optimizer, loss_fn, train_loader, val_loader, **{**settings, **runtime})

    @staticmethod
    def plan_steps(loader_len: int, grad_accum: int, *, epochs: float | None, max_steps: int | None) -> int:
        """Optimizer steps for `max_steps` or `epochs` passes over a loader of `loader_len` batches."""
        by_epochs = math.ceil(epochs * math.ceil(loader_len / grad_accum)) if epochs is not None else None
        return min(s for s in (max_steps, by_epochs) if s is not None)

    # ------------------------------------------------------------------ state

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the run's precision (a no-op in fp32)."""
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded weights (collective under FSDP: every rank must call; rank 0 receives them)."""
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                self.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.raw_model.state_dict()

    def _optimizer_state(self) -> dict:
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.raw_model, self.optimizer, options=opts)
        if self.strategy == "zero1":  # gather the shards on rank 0, the one that writes the checkpoint
            self.optimizer.consolidate_state_dict(to=0)
            return self.optimizer.state_dict() if dist.is_main() else {}
        return self.optimizer.state_dict()

    def state_dict(self) -> dict:
        """Everything besides the weights needed to continue exactly (collective when distributed)."""
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "tokens_seen": self.tokens_seen,
            "flops_seen": self.flops_seen,
            "skipped_steps": self.skipped_steps,
            "interval": self.interval.state_dict(),
            "wall": self.wall(),
            "best_val": self.best_val,
            "best_ckpt": str(self.best_ckpt or ""),
            "optimizer": self._optimizer_state(),
            "scaler": self.scaler.state_dict(),
            "rng_ranks": dist.all_gather_object(rng_state()),  # dropout masks differ per rank
            "world_size": dist.get_world_size(),
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        for name in ("train_loader", "val_loader", "train_eval_loader"):
            loader = getattr(self, name)
            if hasattr(loader, "state_dict"):
                state[name] = loader.state_dict()
        return state

    def load_state_dict(self, state: dict, weights: dict[str, torch.Tensor], where: Path) -> None:
        """Restore weights and trainer state written by `save_checkpoint`."""
        loader = state.get("train_loader", {})
        if int(state.get("world_size", 1)) != dist.get_world_size() and "consumed" in loader and "rows" not in loader:
            raise CheckpointError(
                f"resume: {where} was written by {state['world_size']} processes, now {dist.get_world_size()}, "
                "before checkpoints recorded the rows of a batch; resume it with the same number of processes"
            )
        saved_optimizer = state["optimizer"]
        by_name = bool(saved_optimizer.get("state")) and isinstance(next(iter(saved_optimizer["state"])), str)
        if self.strategy == "fsdp":  # full tensors in, each rank keeps its shard: any world size reshards
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.raw_model, weights, options=StateDictOptions(full_state_dict=True))
            self._set_optimizer_by_name(saved_optimizer if by_name else self._by_name(saved_optimizer))
        else:
            ckpt.load_weights(self.raw_model, {k: v.to(self.device) for k, v in weights.items()}, where)
            if by_name and self.strategy != "zero1":  # written under FSDP, resumed without it
                self._set_optimizer_by_name(saved_optimizer)
            else:
                self.optimizer.load_state_dict(saved_optimizer)
        self.step = self.start_step = int(state["step"])
        self.epoch, self.tokens_seen = int(state["epoch"]), int(state["tokens_seen"])
        self.flops_seen, self.skipped_steps = float(state["flops_seen"]), int(state["skipped_steps"])
        if "interval" in state:  # checkpoints before the field existed logged every step
            self.interval.load_state_dict(state["interval"])
        self.wall_before = float(state.get("wall", 0.0))  # checkpoints before the field existed: 0
        self.best_val = float(state["best_val"])
        self.best_ckpt = Path(state["best_ckpt"]) if state["best_ckpt"] else None
        self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        for name in ("train_loader", "val_loader", "train_eval_loader"):
            loader = getattr(self, name)
            if name in state and hasattr(loader, "load_state_dict"):
                loader.load_state_dict(state[name])
        ranks = state["rng_ranks"]
        if len(ranks) == dist.get_world_size():
            set_rng_state(ranks[dist.get_rank()])
        else:  # another world size: no rank's stream continues; each rank draws anew from the saved rank 0's
            _reseed(ranks[0], dist.get_rank())

    def batch_layout(self) -> dict[str, int | None]:
        """How a global batch is split: processes, micro-batches per step and rows per micro-batch (if known)."""
        batch = getattr(self.train_loader, "batch_size", None)
        return {"world_size": dist.get_world_size(), "grad_accum": self.grad_accum, "batch_size": batch}

    def _by_name(self, saved: dict) -> dict:
        """An optimizer state keyed by parameter position (`Optimizer.state_dict`) keyed by parameter name instead,
        the form FSDP's full optimizer state takes."""
        name_of = {id(p): n for n, p in self.raw_model.named_parameters()}
        names = [name_of[id(p)] for group in self.optimizer.param_groups for p in group["params"]]
        groups = [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]
        return {"state": {names[i]: v for i, v in saved["state"].items()}, "param_groups": groups}

    def _set_optimizer_by_name(self, saved: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.raw_model, self.optimizer, saved, options=opts)

    def wall(self) -> float:
        """Seconds of training so far, over every process that trained this run (resumes add up)."""
        return self.wall_before + (0.0 if self._t_start is None else time.perf_counter() - self._t_start)

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of this step (rank 0 writes) and prune old ones, keeping the best."""
        assert self.ckpt_dir is not None
        weights, state = self.full_state_dict(), self.state_dict()  # collectives: every rank takes part
        path = None
        if dist.is_main():
            extra = {"val_loss": self.last_val, **self.batch_layout()}
            path = ckpt.save_checkpoint(self.ckpt_dir, self.step, weights, state, extra=extra)
            self._saved_step = self.step
            if self.last_val is not None and self.last_val <= self.best_val:
                self.best_val, self.best_ckpt = self.last_val, path
            ckpt.prune(self.ckpt_dir, self.keep_last, keep=self.best_ckpt)
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        dist.barrier()
        return path

    def _maybe_resume(self) -> None:
        if self.resume is None:
            return
        if str(self.resume) == "auto":
            if self.ckpt_dir is None:
                raise CheckpointError("resume: 'auto' needs ckpt_dir")
            if dist.is_main():
                ckpt.clean_partial(self.ckpt_dir)
            dist.barrier()
            path, verified = ckpt.latest_valid(self.ckpt_dir), True
            if path is None:
                if ckpt.list_checkpoints(self.ckpt_dir):
                    raise CheckpointError(f"resume: no valid checkpoint in {self.ckpt_dir}; all are damaged")
                if dist.is_main():
                    print(f"resume: no checkpoint in {self.ckpt_dir} yet; starting at step 0", file=sys.stderr)
                return
        else:
            path, verified = Path(self.resume), False
        weights, state = ckpt.read_checkpoint(path, map_location="cpu", verified=verified)
        self.load_state_dict(state, weights, path)
        self.resumed_from = path
        self.last_val = ckpt.read_meta(path).get("val_loss")  # read_checkpoint verified the files

    # ------------------------------------------------------------------ loop

    def _batches(self):
        while True:
            yield from self.train_loader
            self.epoch += 1
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch)

    def _sync_context(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
        if self.strategy == "ddp" and not last_micro_step:
            return self._eager.no_sync()
        if self.strategy == "fsdp":
            self.raw_model.set_requires_gradient_sync(last_micro_step)
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over `eval_iters` global validation batches (each `grad_accum` micro-batches on every rank,
        averaged over ranks), and over as many batches of
        the training split when a `train_eval_loader` is given (nanoGPT's estimate_loss: `train_eval_loss`)."""
        self.model.eval()
        out = {"step": self.step, "tokens": self.tokens_seen, "flops": self.flops_seen}
        out["val_loss"] = self._mean_loss(self.val_loader)
        if self.train_eval_loader is not None:
            out["train_eval_loss"] = self._mean_loss(self.train_eval_loader)
        self.model.train()
        return out

    def _mean_loss(self, loader: Iterable) -> float:
        total, n = torch.zeros((), dtype=torch.float32, device=self.device), 0
        batches = _cycle(loader)  # a short split wraps around instead of running dry
        # eval_iters global batches: the same rows however they are split into ranks and micro-batches
        for batch in itertools.islice(batches, self.eval_iters * self.grad_accum):
            with self.autocast():
                total += self.loss_fn(self.model, _to_device(batch, self.device)).detach().float()
            n += 1
        return dist.all_reduce_mean(total / n if n else math.nan)  # read back once, not per batch

    def _loss(self, batch: Any) -> torch.Tensor:
        with self.autocast():
            try:
                return self.loss_fn(self.model, batch)
            except Exception as exc:
                if self.model is self._eager or not self.compiled:
                    raise
                # Compilation happens at the first call; fall back once, loudly, then run eagerly.
                warnings.warn(f"torch.compile failed, running eagerly: {str(exc).splitlines()[0]}", stacklevel=2)
                self.model = self._eager
                return self.loss_fn(self.model, batch)

    def train(self) -> dict:
        """Run the loop to `total_steps` (or until a callback, the non-finite policy or Ctrl-C stops it).

        The first Ctrl-C (single process, main thread) lets the current step finish and writes a
        checkpoint; the metrics then carry `interrupted`. A second Ctrl-C aborts at once.
        """
        self._maybe_resume()
        if self.step >= self.total_steps:  # a finished run resumed: nothing to do, say so
            return {"step": self.step, "val_loss": self.last_val, "wall": self.wall_before, "already_complete": True}
        with self._first_ctrl_c_stops():
            metrics = self._loop()
        if self.interrupted and self.ckpt_dir is not None and self._saved_step != self.step:
            self.save_checkpoint()  # Ctrl-C landed between a step's checkpoint check and the next step
        if self.should_stop:
            metrics["stopped"] = self.should_stop
        if self.interrupted:
            metrics.update(interrupted=True, step=self.step)
        for cb in self.callbacks:
            cb.on_train_end(self)
        return metrics

    @contextlib.contextmanager
    def _first_ctrl_c_stops(self):
        usable = threading.current_thread() is threading.main_thread() and dist.get_world_size() == 1
        if not usable or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield
            return

        def on_sigint(signum, frame):
            self.interrupted = True
            self.should_stop = f"interrupted (Ctrl-C) at step {self.step + 1}"
            print(
                f"\nCtrl-C: finishing step {self.step + 1} and writing a checkpoint (Ctrl-C again to abort)",
                file=sys.stderr,
                flush=True,
            )
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _loop(self) -> dict:
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        batches = self._batches()
        metrics: dict = {}
        self._t_start = time.perf_counter()
        while self.step < self.total_steps and not self.should_stop:
            t0 = time.perf_counter()
            try:
                step = self.train_step(batches)
                if self.should_stop and step.finite is False:
                    break
                metrics = self.after_step(step, time.perf_counter() - t0)
            except OUT_OF_MEMORY as exc:  # a step or its evaluation: nothing half-written to keep
                self.optimizer.zero_grad(set_to_none=True)
                raise MemoryBudgetError(self.out_of_memory_advice()) from exc
        return metrics

    def train_step(self, batches: Iterator) -> StepResult:
        """One optimizer step over `grad_accum` micro-batches: forward, backward, unscale, clip, step (or skip)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        result = StepResult()
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            td = time.perf_counter()
            batch = _to_device(next(batches), self.device, self.pin_memory)
            result.data_wait += time.perf_counter() - td
            first = _first_tensor(batch)
            if first is not None:
                self._batch_shape, self.last_inputs = tuple(first.shape), first
                result.n_tokens, result.seq_len = result.n_tokens + first.numel(), first.shape[-1]
            with self._sync_context(micro == self.grad_accum - 1):
                loss = self._loss(batch)
                self.scaler.scale(loss / self.grad_accum).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad or math.inf)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        for cb in self.callbacks:
            cb.on_before_optimizer_step(self)
        result.loss = dist.all_reduce_mean_(loss_sum / self.grad_accum)  # every rank decides alike
        result.grad_norm = grad_norm.detach()
        finite = torch.isfinite(result.loss) & (torch.isfinite(grad_norm) | (self.precision == "fp16"))
        self._apply(finite, result)
        self.interval.add(result.loss, result.grad_norm, result.finite)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return result

    def _apply(self, finite: torch.Tensor, result: StepResult) -> None:
        """The optimizer step, or the non-finite policy: on the device where the optimizer can skip by itself,
        else after one host read of `finite` (the only sync of a step between logs)."""
        if self.device_skip:
            self.optimizer.found_inf, self.optimizer.grad_scale = (~finite).float(), None
            try:
                self.scaler.step(self.optimizer)
            finally:
                del self.optimizer.found_inf, self.optimizer.grad_scale
            result.finite = finite
            return
        result.finite = bool(finite)
        if result.finite:
            self.scaler.step(self.optimizer)  # fp16: GradScaler itself skips steps with inf gradients
            return
        self.skipped_steps += 1
        if self.nonfinite == "stop":
            self.should_stop = f"non-finite loss/gradient at step {self.step + 1}; last good checkpoint kept"

    def after_step(self, step: StepResult, dt: float) -> dict:
        """Schedule, counters, metrics and callbacks after a step; then evaluation and checkpoint when due."""
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        global_tokens = step.n_tokens * dist.get_world_size()
        self.tokens_seen += global_tokens
        step_flops = self.step_flops(global_tokens, step.seq_len)
        self.flops_seen += step_flops or 0.0
        self.throughput.update(global_tokens, dt, step.data_wait)
        self.interval.steps += 1
        self.interval.tokens += global_tokens
        self.interval.flops += step_flops or 0.0
        metrics = self._step_metrics(step, lr, dt, global_tokens, step_flops)
        if self.max_time is not None and metrics["wall"] >= self.max_time:
            self.should_stop = f"time budget of {self.max_time:g} s reached at step {self.step}"
        scheduled = self.step % self.log_interval == 0 or self.step == self.total_steps
        if scheduled or self.should_stop:
            self._log_metrics(metrics, restart=scheduled)
        for cb in self.callbacks:
            cb.on_batch_end(self, metrics)
        last = self.step == self.total_steps or bool(self.should_stop)
        if last and not (scheduled or isinstance(metrics["loss"], float)):  # a callback stopped the run
            self._log_metrics(metrics, restart=False)
        with self.interval.pause():
            self._evaluate_and_save(metrics, last)
        return metrics

    def _evaluate_and_save(self, metrics: dict, last: bool) -> None:
        due = self.step % self.eval_interval == 0 or last
        if self.val_loader is not None and due and not self.interrupted:
            val = self.evaluate()
            self.last_val = val["val_loss"]
            metrics.update(val)
            for cb in self.callbacks:
                cb.on_eval_end(self, val)
        if self.ckpt_dir is not None and (self.step % self.ckpt_interval == 0 or last):
            self.save_checkpoint()

    def _step_metrics(self, step: StepResult, lr: float, dt: float, tokens: int, flops: float | None) -> dict:
        metrics = {
            "step": self.step,
            "tokens": self.tokens_seen,
            "flops": self.flops_seen,
            "wall": self.wall(),
            "loss": step.loss,
            "lr": lr,
            "grad_norm": step.grad_norm,
            "step_time": dt,
            "data_wait": step.data_wait,
            "tokens_per_s": tokens / dt,
            "mfu": (flops / dt / self.peak / dist.get_world_size()) if flops and self.peak else None,
            "skipped_steps": self.skipped_steps,
            "peak_mem": peak_memory_bytes(self.device),
        }
        return metrics

    def _log_metrics(self, metrics: dict, restart: bool = True) -> None:
        """A log step: the interval's mean loss and gradient norm, skipped steps and throughput, read back once.

        Between log steps `loss` and `grad_norm` are the step's own device tensors and `step_time` the host's
        launch time; here the device has caught up, so the interval's seconds give the real step time, rate and MFU.
        """
        sums = self.interval.read(restart)
        n = sums["finite_steps"]
        if self.device_skip and restart:  # the host counted its own skips
            self.skipped_steps += round(sums["skipped"])
        metrics["loss"] = sums["loss"] / n if n else math.nan
        metrics["grad_norm"] = sums["grad_norm"] / n if n else math.nan
        metrics["skipped_steps"] = self.skipped_steps + (
            0 if restart or not self.device_skip else round(sums["skipped"])
        )
        if n and restart:
            self.loss_meter.update(metrics["loss"], round(n))
        if sums["seconds"] > 0 and sums["steps"]:
            metrics["step_time"] = sums["seconds"] / sums["steps"]
            metrics["tokens_per_s"] = sums["tokens"] / sums["seconds"]
            if sums["flops"] and self.peak:
                metrics["mfu"] = sums["flops"] / sums["seconds"] / self.peak / dist.get_world_size()
        router = getattr(self.raw_model, "router_stats", None)
        if router is not None and (stats := router()):
            metrics["tokens_per_expert"] = stats  # MoE load, per layer, for the last micro-batch

    def out_of_memory_advice(self) -> str:
        """One line for an out-of-memory step: the batch, the cost card's activation estimate, the remedies."""
        shape = getattr(self, "_batch_shape", None)
        batch, seq_len = (shape[0], shape[-1]) if shape and len(shape) >= 2 else (None, None)
        where = f"batch {batch} x {seq_len} tokens (grad_accum {self.grad_accum})" if batch else "the first batch"
        cfg = getattr(self.raw_model, "config", None)
        estimate = ""
        if batch and getattr(cfg, "arch", None) == "decoder":
            from lmlab.model.cost import activation_bytes

            width = 4 if self.precision == "fp32" else 2
            estimate = f", activations about {activation_bytes(cfg, seq_len, batch, width) / 2**30:.2f} GiB (cost card)"
        return (
            f"out of memory on {self.device} at step {self.step + 1} with {where}{estimate}; the last checkpoint is "
            f"intact. Try a smaller --batch with --train.grad_accum (same global batch), "
            f"--train.activation_checkpointing full, or --precision bf16"
        )

    def step_flops(self, n_tokens: int, seq_len: int) -> float | None:
        """Training FLOPs (forward + backward) of one step over `n_tokens` tokens in sequences of `seq_len`."""
        per_token = getattr(self.raw_model, "flops_per_token", None)
        if per_token is None or not seq_len:
            return None
        return float(per_token(seq_len, training=True) * n_tokens)
