"""MiniTrainer: a small, complete training loop (accumulation, clipping, AMP, eval, checkpoints, resume)."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmlab.errors import CheckpointError
from lmlab.trainer import checkpoint as ckpt
from lmlab.trainer.callbacks import Callback
from lmlab.utils.hardware import autocast_dtype, peak_flops, resolve_device, resolve_precision


def causal_lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Next-token loss of an (x, y) batch, plus the model's auxiliary loss if it returns one."""
    x, y = batch
    out = model(x, targets=y)
    return out.loss if out.aux_loss is None else out.loss + out.aux_loss


def rng_state() -> dict:
    """Every RNG the loop touches, as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state`."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _count_tokens(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values()), None)
    return first.numel() if isinstance(first, torch.Tensor) else 0


class MiniTrainer:
    """Trains `model` on `train_loader` for `max_steps` optimizer steps or `epochs` passes (whichever ends first)."""

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
        ckpt_dir: str | Path | None = None,
        eval_interval: int | None = None,
        eval_iters: int = 20,
        ckpt_interval: int | None = None,
        keep_last: int = 2,
        resume: str | Path | None = None,
        peak_flops_override: float | None = None,
    ) -> None:
        if train_loader is None:
            raise ValueError("train_loader is required")
        if max_steps is None and epochs is None:
            raise ValueError("set max_steps or epochs")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device)
        self.optimizer, self.loss_fn, self.scheduler = optimizer, loss_fn, scheduler
        self.train_loader, self.val_loader = train_loader, val_loader
        self.grad_accum, self.clip_grad = grad_accum, clip_grad
        self.callbacks = list(callbacks)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.eval_iters, self.keep_last, self.resume = eval_iters, keep_last, resume
        self.total_steps = self.plan_steps(
            len(train_loader) if epochs is not None else 0, grad_accum, epochs=epochs, max_steps=max_steps
        )
        self.eval_interval = eval_interval or self.total_steps
        self.ckpt_interval = ckpt_interval or self.eval_interval
        self.step = self.start_step = self.epoch = 0
        self.tokens_seen = 0
        self.best_val = math.inf
        self.best_ckpt: Path | None = None
        self.last_val: float | None = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.peak = peak_flops(self.device, self.precision, override=peak_flops_override)
        self._flops_per_token = getattr(model, "flops_per_token", None)

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

    def state_dict(self) -> dict:
        """Everything besides the weights needed to continue exactly."""
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "tokens_seen": self.tokens_seen,
            "best_val": self.best_val,
            "best_ckpt": str(self.best_ckpt or ""),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        for name in ("train_loader", "val_loader"):
            loader = getattr(self, name)
            if hasattr(loader, "state_dict"):
                state[name] = loader.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Inverse of `state_dict`."""
        self.step = self.start_step = int(state["step"])
        self.epoch, self.tokens_seen = int(state["epoch"]), int(state["tokens_seen"])
        self.best_val = float(state["best_val"])
        self.best_ckpt = Path(state["best_ckpt"]) if state["best_ckpt"] else None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        for name in ("train_loader", "val_loader"):
            loader = getattr(self, name)
            if name in state and hasattr(loader, "load_state_dict"):
                loader.load_state_dict(state[name])
        set_rng_state(state["rng"])

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step and prune old ones (keeping the best)."""
        assert self.ckpt_dir is not None
        path = ckpt.save_checkpoint(
            self.ckpt_dir, self.step, self.model, self.state_dict(), extra={"val_loss": self.last_val}
        )
        if self.last_val is not None and self.last_val <= self.best_val:
            self.best_val, self.best_ckpt = self.last_val, path
        ckpt.prune(self.ckpt_dir, self.keep_last, keep=self.best_ckpt)
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)
        return path

    def _maybe_resume(self) -> None:
        if self.resume is None:
            return
        if str(self.resume) == "auto":
            if self.ckpt_dir is None:
                raise CheckpointError("resume: 'auto' needs ckpt_dir")
            ckpt.clean_partial(self.ckpt_dir)
            path = ckpt.latest_valid(self.ckpt_dir)
            if path is None:
                if ckpt.list_checkpoints(self.ckpt_dir):
                    raise CheckpointError(f"resume: no valid checkpoint in {self.ckpt_dir}; all are damaged")
                return  # nothing to resume: a fresh start is what 'auto' means here
        else:
            path = Path(self.resume)
        self.load_state_dict(ckpt.load_checkpoint(path, self.model, map_location=self.device))
        self.resumed_from = path

    # ------------------------------------------------------------------ loop

    def _batches(self):
        while True:
            yield from self.train_loader
            self.epoch += 1
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over `eval_iters` validation batches."""
        self.model.eval()
        losses = []
        it = iter(self.val_loader)
        for _ in range(self.eval_iters):
            try:
                batch = next(it)
            except StopIteration:
                break
            with self.autocast():
                losses.append(float(self.loss_fn(self.model, _to_device(batch, self.device))))
        self.model.train()
        return {"step": self.step, "tokens": self.tokens_seen, "val_loss": sum(losses) / max(1, len(losses))}

    def train(self) -> dict:
        """Run the loop to `total_steps`; returns the last metrics."""
        self.resumed_from = None
        self._maybe_resume()
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        batches = self._batches()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        metrics: dict = {}
        t_start = time.perf_counter()
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            data_wait, n_tokens = 0.0, 0
            loss_sum = torch.zeros((), device=self.device)
            for _ in range(self.grad_accum):
                td = time.perf_counter()
                batch = _to_device(next(batches), self.device)
                data_wait += time.perf_counter() - td
                n_tokens += _count_tokens(batch)
                with self.autocast():
                    loss = self.loss_fn(self.model, batch)
                self.scaler.scale(loss / self.grad_accum).backward()
                loss_sum += loss.detach()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad or math.inf)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            lr = self.optimizer.param_groups[0]["lr"]
            if self.scheduler is not None:
                self.scheduler.step()
            self.step += 1
            self.tokens_seen += n_tokens
            dt = time.perf_counter() - t0
            metrics = {
                "step": self.step,
                "tokens": self.tokens_seen,
                "loss": float(loss_sum) / self.grad_accum,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "step_time": dt,
                "data_wait": data_wait,
                "tokens_per_s": n_tokens / dt,
                "wall": time.perf_counter() - t_start,
                "mfu": self._mfu(batch, n_tokens, dt),
            }
            router = getattr(self.model, "router_stats", None)
            if router is not None and (stats := router()):
                metrics["tokens_per_expert"] = stats  # MoE load, per layer, for the last micro-batch
            for cb in self.callbacks:
                cb.on_batch_end(self, metrics)
            last = self.step == self.total_steps
            if self.val_loader is not None and (self.step % self.eval_interval == 0 or last):
                val = self.evaluate()
                self.last_val = val["val_loss"]
                metrics.update(val)
                for cb in self.callbacks:
                    cb.on_eval_end(self, val)
            if self.ckpt_dir is not None and (self.step % self.ckpt_interval == 0 or last):
                self.save_checkpoint()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return metrics

    def _mfu(self, batch: Any, n_tokens: int, dt: float) -> float | None:
        if self._flops_per_token is None or self.peak is None or not isinstance(batch, (list, tuple)):
            return None
        seq_len = batch[0].shape[-1]
        return self._flops_per_token(seq_len, training=True) * n_tokens / dt / self.peak
