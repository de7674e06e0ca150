"""Vocab- and column-parallel embeddings in 2 gloo processes equal the unsharded embedding."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from lmlab.embed.parallel import ColumnParallelEmbedding, VocabParallelEmbedding, shard_range
from lmlab.pipeline.train_cluster import free_port
from tests.conftest import tiny_cfg


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = tiny_cfg("llama", vocab_size=37, d_model=10, n_head=2, tie_weights=False)
        torch.manual_seed(0)
        full = torch.randn(37, 10)
        ids = torch.randint(0, 37, (3, 7))
        upstream = torch.randn(3, 7, 10)
        ref_w = full.clone().requires_grad_(True)
        ref = F.embedding(ids, ref_w)
        (ref * upstream).sum().backward()
        for cls, dim in ((VocabParallelEmbedding, 0), (ColumnParallelEmbedding, 1)):
            emb = cls(cfg)
            emb.load_full(full)
            out = emb(ids)
            (out * upstream).sum().backward()
            start, end = shard_range(full.shape[dim], rank, world)
            grad_ref = ref_w.grad.narrow(dim, start, end - start)
            results[(cls.__name__, rank)] = (
                torch.allclose(out, ref, atol=1e-6),
                torch.allclose(emb.weight.grad, grad_ref, atol=1e-6),
                tuple(emb.weight.shape),
            )
    finally:
        dist.destroy_process_group()


def test_sharded_embeddings_equal_unsharded_in_two_processes():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), results), nprocs=2, join=True)
        results = dict(results)
    assert results[("VocabParallelEmbedding", 0)] == (True, True, (19, 10))
    assert results[("VocabParallelEmbedding", 1)] == (True, True, (18, 10))
    assert results[("ColumnParallelEmbedding", 0)] == (True, True, (37, 5))
    assert results[("ColumnParallelEmbedding", 1)] == (True, True, (37, 5))


def test_single_process_is_plain_embedding():
    cfg = tiny_cfg("llama", vocab_size=37, d_model=10, n_head=2)
    emb = VocabParallelEmbedding(cfg)
    full = torch.randn(37, 10)
    emb.load_full(full)
    ids = torch.randint(0, 37, (2, 5))
    torch.testing.assert_close(emb(ids), F.embedding(ids, full))
    assert shard_range(10, 0, 3) == (0, 4) and shard_range(10, 2, 3) == (7, 10)
