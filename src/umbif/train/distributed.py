"""The few lines DDP needs: start-up from torchrun's environment, seeding, a sharded loader, and the
collectives of the contrastive loss. Without torchrun everything works as one process.

Launch (one node, 4 GPUs): ``torchrun --standalone --nproc_per_node 4 -m umbif pretrain ...``
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its global rank, the number of processes, its rank on this node and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``), or, without those variables, run as a single process on ``cuda:0`` or the CPU.

    Args:
        backend: ``None`` picks ``nccl`` when CUDA is available and ``gloo`` otherwise.

    Returns:
        This process's :class:`DistInfo`; with CUDA, its device is also made the current one.
    """
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return DistInfo(0, 1, 0, torch.device("cuda", 0) if cuda else torch.device("cpu"))
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as error:
        raise RuntimeError(f"RANK is set but the torchrun environment is incomplete or invalid: {error}") from error
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend or ("nccl" if cuda else "gloo"),
        rank=rank,
        world_size=world_size,
        device_id=device if cuda else None,  # binds NCCL to this GPU (barriers and collectives use it)
    )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup() -> None:
    """Leave the process group (no-op for a single process)."""
    if _initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed + rank``: the ranks draw different
    augmentations and dropout masks, and a run is repeatable. Returns the seed used."""
    derived = seed + rank
    random.seed(derived)
    np.random.seed(derived % 2**32)
    torch.manual_seed(derived)  # also every CUDA device
    return derived


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` ``[B, ...]`` from every rank along dim 0 (rank order) → ``[world_size * B, ...]``.

    Gradients flow back to each rank's own slice: the backward pass sums, over the ranks, the gradient of
    each rank's loss with respect to this rank's slice. With DDP averaging the parameter gradients, the
    result equals the gradient of the mean of the ranks' losses, i.e. of one process over the whole
    global batch. Every rank must pass the same shape (use ``drop_last``). A single process gets
    ``tensor`` back.
    """
    if not _initialized() or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather  # autograd-aware collective

    return torch.cat(all_gather(tensor), dim=0)


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks (a detached copy; for logging, not for gradients)."""
    out = tensor.detach().clone()
    if _initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (each rank a disjoint shard, reshuffled per epoch from ``seed + epoch``) that can
    start an epoch part-way, so a resumed run sees the same samples without reading the skipped ones."""

    start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffle for ``epoch`` and skip the first ``start`` samples of this rank's shard
        (``start = batches done in the epoch * batch size``)."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[Any]:
        return islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    info: DistInfo,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A loader over this rank's shard of ``dataset``; call ``loader.sampler.set_epoch(epoch)`` before each epoch.

    Args:
        batch_size: per rank (the global batch is ``batch_size * info.world_size``).
        drop_last: drop the incomplete last batch and make every shard the same length, as
            :func:`all_gather_with_grad` needs equal shapes on all ranks.
        num_workers: loader processes; their seeds come from a generator seeded with ``seed`` (so the
            global torch RNG, which the checkpoint saves, is not consumed by the loader).
    """
    sampler = ResumableSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=info.device.type == "cuda",
        drop_last=drop_last,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
