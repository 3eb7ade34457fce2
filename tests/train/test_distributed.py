from __future__ import annotations

import copy
import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from umbif.train.distributed import (
    DistInfo,
    all_gather_with_grad,
    cleanup,
    init_distributed,
    make_loader,
    reduce_mean,
    seed_everything,
)

WORLD, LOCAL_BATCH = 2, 3


def _info_nce(z1: torch.Tensor, z2_all: torch.Tensor, offset: int) -> torch.Tensor:
    """Anchors ``z1`` [B, E] against every second view ``z2_all`` [W*B, E]; positives at ``offset + i``."""
    logits = F.normalize(z1, dim=1) @ F.normalize(z2_all, dim=1).T / 0.2
    return F.cross_entropy(logits, offset + torch.arange(len(z1)))


def _worker(rank: int, port: int) -> None:
    """One rank of a real two-process gloo group, started the way torchrun would (environment variables)."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    info = init_distributed()
    try:
        assert (info.rank, info.world_size, info.local_rank, info.is_main) == (rank, WORLD, rank, rank == 0)
        assert info.device == torch.device("cpu") and torch.distributed.get_backend() == "gloo"

        # all_gather_with_grad: values in rank order; gradient = sum over ranks of their losses' gradients
        local = torch.full((LOCAL_BATCH, 2), float(rank + 1), requires_grad=True)
        gathered = all_gather_with_grad(local)
        expected = torch.cat([torch.full((LOCAL_BATCH, 2), float(r + 1)) for r in range(WORLD)])
        assert torch.equal(gathered, expected)
        weights = torch.arange(WORLD * LOCAL_BATCH * 2.0).reshape(-1, 2)
        (gathered * weights * (rank + 1)).sum().backward()  # rank r's loss weighs everything by r + 1
        own = weights[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]
        assert torch.equal(local.grad, own * sum(r + 1 for r in range(WORLD)))

        # DDP + gathered negatives == one process over the global batch
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
        reference = copy.deepcopy(model)
        g = torch.Generator().manual_seed(1)
        view1, view2 = (
            torch.randn(WORLD * LOCAL_BATCH, 5, generator=g),
            torch.randn(WORLD * LOCAL_BATCH, 5, generator=g),
        )
        mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        ddp = DistributedDataParallel(model)
        z1, z2 = ddp(torch.cat([view1[mine], view2[mine]])).chunk(2)
        loss = _info_nce(z1, all_gather_with_grad(z2), offset=rank * LOCAL_BATCH)
        loss.backward()
        z1, z2 = reference(torch.cat([view1, view2])).chunk(2)
        reference_loss = _info_nce(z1, z2, offset=0)
        reference_loss.backward()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reduce_mean(loss), reference_loss.detach())
        del ddp  # its reducer holds the group: release it, then leave together (gloo can abort a rank that exits early)
        torch.distributed.barrier()
    finally:
        cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_over_the_global_batch():
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)


def test_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
    assert torch.equal(reduce_mean(x), x)
    cleanup()


def test_incomplete_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun environment"):
        init_distributed()


def test_seed_everything_differs_per_rank_and_repeats():
    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    assert seed_everything(7, rank=1) == 8
    first = draws()
    seed_everything(7, rank=1)
    assert draws() == first
    seed_everything(7, rank=0)
    assert draws() != first


def _epoch(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def test_loader_shards_are_disjoint_reshuffled_per_epoch_and_resumable():
    dataset = TensorDataset(torch.arange(11))
    loaders = [make_loader(dataset, 2, DistInfo(rank, 2, rank, torch.device("cpu")), seed=3) for rank in range(WORLD)]
    for loader in loaders:
        loader.sampler.set_epoch(0)
    shards = [_epoch(loader) for loader in loaders]
    assert [len(s) for s in shards] == [4, 4]  # 11 → 5 per rank (drop_last), 2 full batches of 2
    assert not set(shards[0]) & set(shards[1])
    loaders[0].sampler.set_epoch(1)
    epoch1 = _epoch(loaders[0])
    assert epoch1 != shards[0]
    loaders[0].sampler.set_epoch(1, start=2)  # resume after the first batch of 2
    assert _epoch(loaders[0]) == epoch1[2:]
    assert len(loaders[0]) == 1
