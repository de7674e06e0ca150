"""Wrapping a model for training: activation checkpointing, DDP, ZeRO-1 or FSDP2, torch.compile with a fallback.

Order follows torchtitan: activation checkpointing on each block, then data parallelism
(DDP; ZeRO-1, DDP with a ZeroRedundancyOptimizer; or FSDP2's `fully_shard` per block and at the
root), then compilation.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmlab.utils.dist import get_local_rank, get_world_size, is_distributed
from lmlab.utils.hardware import missing_compiler


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 2) -> int:
    """Recompute block activations in the backward (`full`: every block; `every_n`: every n-th); returns how many."""
    if mode == "none":
        return 0
    blocks = getattr(model, "blocks", [])
    wrapped = 0
    for i, block in enumerate(blocks):
        if mode == "full" or (mode == "every_n" and i % every == 0):
            block.forward = _checkpointed(block.forward)
            wrapped += 1
    return wrapped


def _checkpointed(forward: Callable) -> Callable:
    def run(x, *, pos, cache=None):
        if cache is not None or not torch.is_grad_enabled():
            return forward(x, pos=pos, cache=cache)
        return checkpoint(lambda h: forward(h, pos=pos), x, use_reentrant=False)

    return run


def resolve_strategy(strategy: str) -> str:
    """`auto` -> ddp when launched with several processes, else none; a data-parallel strategy in a
    process launched alone runs as none (a world of one), with a one-line notice."""
    if strategy == "auto":
        return "ddp" if get_world_size() > 1 else "none"
    if strategy != "none" and not is_distributed():
        print(
            f"note: train.distributed={strategy} in a single process: training without data parallelism "
            "(launch with torchrun --nproc_per_node N -m lmlab train ... for several)",
            file=sys.stderr,
        )
        return "none"
    return strategy


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel on this rank's device."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [get_local_rank()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def wrap_zero1(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """ZeRO stage 1: the same optimizer over the same parameter groups, its state sharded across ranks
    (each rank updates its shard of the parameters and broadcasts it; gradients stay DDP's all-reduce)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    groups = [dict(g) for g in optimizer.param_groups]  # every group keeps its own hyperparameters
    # `defaults` can hold entries the constructor does not take (AdamW's decoupled_weight_decay).
    accepted = inspect.signature(type(optimizer).__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return ZeroRedundancyOptimizer(groups, optimizer_class=type(optimizer), **defaults)


def wrap_fsdp(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Shard each block and the root with FSDP2; the optimizer is rebuilt over the sharded parameters."""
    from torch.distributed.fsdp import fully_shard

    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    for block in getattr(model, "blocks", []):
        fully_shard(block)
    fully_shard(model)
    params = dict(model.named_parameters())
    new_groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [params[n] for n in names_]}
        for g, names_ in zip(optimizer.param_groups, groups, strict=True)
    ]
    return type(optimizer)(new_groups)  # every group carries its own hyperparameters


def compile_model(model: nn.Module) -> nn.Module:
    """torch.compile, or the model itself with a one-line warning when compilation is unavailable."""
    first = next(model.parameters(), None)
    reason = missing_compiler(first.device.type) if first is not None else None
    if reason is not None:  # compiling would only fail at the first step, deep inside inductor
        warnings.warn(f"{reason}; running eagerly", stacklevel=2)
        return model
    try:
        return torch.compile(model)
    except Exception as exc:  # e.g. no C++ compiler, unsupported platform
        warnings.warn(f"torch.compile unavailable, running eagerly: {str(exc).splitlines()[0]}", stacklevel=2)
        return model
