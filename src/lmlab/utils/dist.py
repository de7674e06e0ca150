"""torch.distributed helpers that also work in a single, non-distributed process (torchrun sets the env)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else int(os.environ.get("WORLD_SIZE", 1))


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", 0))


def get_local_rank() -> int:
    """Rank within this node (torchrun's LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on rank 0: the process that logs and writes files."""
    return get_rank() == 0


def init_distributed() -> bool:
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPU); False when run alone."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # before the group: NCCL binds each rank to the current device
        torch.cuda.set_device(get_local_rank())
        dist.init_process_group(backend, device_id=torch.device("cuda", get_local_rank()))
    else:
        dist.init_process_group(backend)
    return True


def process_device() -> torch.device:
    """Where this process's collectives run: its GPU under NCCL (which takes CUDA tensors only), else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """Average `t` over ranks in place, on the process's device, without reading it back; returns it."""
    if is_distributed():
        device = process_device()
        on_device = t if t.device == device else t.to(device)
        dist.all_reduce(on_device)
        on_device /= dist.get_world_size()
        if on_device is not t:
            t.copy_(on_device)
    return t


def all_reduce_mean(value: float | torch.Tensor) -> float:
    """Mean of a scalar over ranks, read back as a Python float (one host sync)."""
    if not is_distributed():
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64, device=process_device()).detach().clone()
    return float(all_reduce_mean_(t))


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (NCCL pickles through the current CUDA device, set at init)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op alone); under NCCL on this process's GPU."""
    if not is_distributed():
        return
    device = process_device()
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


# What gloo and NCCL say when a peer's connection goes: its process, or its whole node, died.
_PEER_LOST = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
    "remote process exited",
    "Socket closed",
    "ncclRemoteError",
)


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc`, raised inside a process group, says another process of the group is gone."""
    text = str(exc)
    return is_distributed() and (isinstance(exc, dist.DistError) or any(s in text for s in _PEER_LOST))


def first_line(exc: BaseException) -> str:
    """The first line of an error's message without the C++ source location gloo puts before it."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return line.split("] ", 1)[-1] if line.startswith("[") else line
