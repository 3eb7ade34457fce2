from __future__ import annotations

import copy
import os
import random
import signal
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from umbif.train.distributed import (
    all_gather_with_grad,
    any_rank,
    cleanup,
    from_main,
    init_distributed,
    launch_env,
    reduce_mean,
    seed_everything,
    seed_worker,
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

        # a flag raised on one rank is seen on both; rank 0's decision reaches every rank
        assert any_rank(rank == 1, info.device) and not any_rank(False, info.device)
        assert from_main(f"decided by {rank}") == "decided by 0"
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
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
    assert torch.equal(reduce_mean(x), x)
    cleanup()


def test_seed_everything_differs_per_rank_and_repeats():
    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    assert seed_everything(7, rank=1) == 8
    first = draws()
    seed_everything(7, rank=1)
    assert draws() == first
    seed_everything(7, rank=0)
    assert draws() != first


TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
SRUN = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
        "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7", "SLURM_JOB_ID": "4321987"}  # fmt: skip


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),  # no launcher: one process
        (TORCHRUN, (3, 8, 1, None)),  # torchrun: env:// reads MASTER_ADDR and MASTER_PORT itself
        ({**TORCHRUN, **SRUN}, (3, 8, 1, None)),  # torchrun under Slurm: torchrun's variables win
        (SRUN, (5, 8, 1, "tcp://10.0.0.7:16987")),  # the step's tasks; port 15000 + the job id's last four digits
        ({**SRUN, "MASTER_ADDR": "node0", "MASTER_PORT": "1234"}, (5, 8, 1, "tcp://node0:1234")),
        ({k: v for k, v in SRUN.items() if k != "SLURM_STEP_NUM_TASKS"}, (5, 16, 1, "tcp://10.0.0.7:16987")),
        ({**SRUN, "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, None),  # a step of one task
    ],
    ids=["none", "torchrun", "torchrun-in-slurm", "srun", "srun-master-set", "srun-ntasks", "srun-one-task"],
)
def test_launch_environment_of_torchrun_and_slurm(environ: dict, expected: tuple | None) -> None:
    found = launch_env(environ)
    if expected is None:
        assert found is None
    else:
        assert (found["rank"], found["world_size"], found["local_rank"], found["init_method"]) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "0"}, "torchrun environment"),
        ({"RANK": "zero", "WORLD_SIZE": "2"}, "torchrun environment"),
        ({k: v for k, v in SRUN.items() if k != "SLURM_LAUNCH_NODE_IPADDR"}, "SLURM_LAUNCH_NODE_IPADDR"),
        ({**SRUN, "SLURM_PROCID": "x"}, "Slurm environment is incomplete or invalid"),
    ],
)
def test_incomplete_launch_environment_is_refused(environ: dict, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        launch_env(environ)


def test_loader_worker_seeds_differ_per_rank_and_worker_and_repeat() -> None:
    def draws(worker: int, rank: int) -> tuple[float, float, float]:
        seed_worker(worker, seed=7, rank=rank)
        return random.random(), float(np.random.rand()), torch.rand(1).item()

    previous = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGUSR1", "SIGTERM")}
    try:
        seen = {(worker, rank): draws(worker, rank) for worker in range(3) for rank in range(3)}
        assert len(set(seen.values())) == 9
        assert draws(2, 1) == seen[2, 1]
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN  # the training process decides when to stop
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def test_one_process_agrees_with_itself() -> None:
    assert any_rank(True, torch.device("cpu")) and not any_rank(False, torch.device("cpu"))
    assert from_main(3) == 3
