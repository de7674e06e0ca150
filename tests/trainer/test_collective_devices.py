"""Every distributed helper hands the collectives tensors on the process's device: under NCCL that is
the rank's GPU (NCCL takes CUDA tensors only), which a CPU/gloo run cannot show by itself. Here the
group and the backend are patched: the process device is `meta`, and each collective records the
device of what it was given, then stops the helper."""

import pytest
import torch

import lmlab.utils.dist as lmdist


class Handed(Exception):
    """Raised by the patched collectives once they have recorded their argument."""


@pytest.fixture
def nccl_like(monkeypatch):
    seen: list = []

    def collective(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        seen.append(tensors[0].device if tensors else kwargs.get("device_ids"))
        raise Handed

    monkeypatch.setattr(lmdist.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(lmdist.dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(lmdist.dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(lmdist.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(lmdist, "process_device", lambda: torch.device("meta"))
    for name in ("all_reduce", "barrier", "all_gather_object"):
        monkeypatch.setattr(lmdist.dist, name, collective)
    return seen


@pytest.mark.parametrize("value", [1.5, torch.tensor(1.5), torch.tensor(1.5, dtype=torch.float64)])
def test_all_reduce_mean_reduces_on_the_process_device(nccl_like, value):
    with pytest.raises(Handed):
        lmdist.all_reduce_mean(value)
    assert nccl_like == [torch.device("meta")]


def test_in_place_mean_moves_a_host_tensor_to_the_process_device(nccl_like):
    with pytest.raises(Handed):
        lmdist.all_reduce_mean_(torch.zeros(3))
    assert nccl_like == [torch.device("meta")]


def test_barrier_names_the_rank_gpu_under_nccl(nccl_like, monkeypatch):
    monkeypatch.setattr(lmdist, "process_device", lambda: torch.device("cuda", 0))
    with pytest.raises(Handed):
        lmdist.barrier()
    assert nccl_like == [[0]]


def test_process_device_is_the_current_gpu_under_nccl_and_the_cpu_under_gloo(monkeypatch):
    monkeypatch.setattr(lmdist.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(lmdist.torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(lmdist.dist, "get_backend", lambda *a: "nccl")
    assert lmdist.process_device() == torch.device("cuda", 3)
    monkeypatch.setattr(lmdist.dist, "get_backend", lambda *a: "gloo")
    assert lmdist.process_device() == torch.device("cpu")


def test_alone_the_helpers_touch_no_collective(monkeypatch):
    monkeypatch.setattr(lmdist.dist, "is_initialized", lambda: False)
    assert lmdist.all_reduce_mean(torch.tensor(2.5)) == 2.5
    t = torch.ones(2)
    assert lmdist.all_reduce_mean_(t) is t
    assert lmdist.all_gather_object({"a": 1}) == [{"a": 1}]
    lmdist.barrier()
