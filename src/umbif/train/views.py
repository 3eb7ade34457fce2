"""Crops of cached exams for pretraining, cut in the loader's workers, in an order that does not depend on the
number of processes, of workers, or on where the run was resumed.

The order. Epoch ``e`` visits the exams in a permutation drawn from ``(seed, e)``. Its positions are grouped in
global batches of ``G = batch_size * accum_steps * world_size`` exams (a tail too short for one is left out of
that epoch; the next permutation differs). Each group is read once and serves ``views_per_read`` consecutive
optimiser steps: step ``j`` of the group sees view pair ``j`` of every exam in it. Inside a group, positions are
cut in chunks of ``batch_size``; micro-batch ``m`` of rank ``r`` is chunk ``m * world_size + r``.

The crops. The boxes of the exam at position ``p`` of epoch ``e`` come from a generator seeded with
``(seed, e, p)``, and only those boxes are read from the memory-mapped cache file. What happens on the device
after (flips, intensities, noise, masks) draws from a generator seeded with ``(seed, step, chunk)``
(:func:`derived_seed`).

So the exams of a step, their crops and their augmentations are functions of ``(seed, step)`` and ``G``: the same
for 8 processes or 1 process with 8 accumulation steps, with or without workers, resumed or not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import product
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from umbif import SEQUENCES
from umbif.data.datasets import CacheDataset
from umbif.train.augment import crop_starts
from umbif.train.distributed import DistInfo, seed_worker


def derived_seed(*keys: int) -> int:
    """A 64-bit seed from non-negative integers (NumPy's ``SeedSequence``: nearby keys give unrelated streams)."""
    return int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0])


def epoch_order(seed: int, epoch: int, exams: int) -> np.ndarray:
    """The exams' order in ``epoch``: a permutation of ``range(exams)`` drawn from ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(exams)


@dataclass(frozen=True)
class DataPlan:
    """Which exams every step and rank get (the module's docstring says how)."""

    exams: int  # exams in the dataset
    batch_size: int  # exams per micro-batch and rank
    accum_steps: int  # micro-batches per optimiser step
    world_size: int  # processes
    views_per_read: int  # steps served by one read of a group of exams
    seed: int

    @property
    def global_batch(self) -> int:
        """Exams per optimiser step, over every rank and micro-batch."""
        return self.batch_size * self.accum_steps * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.exams // self.global_batch * self.views_per_read

    def chunk(self, micro: int, rank: int) -> int:
        """Index, in the global batch, of the ``batch_size`` exams of micro-batch ``micro`` on ``rank``."""
        return micro * self.world_size + rank

    def locate(self, step: int) -> tuple[int, int, int]:
        """``(epoch, group, view)`` of optimiser step ``step`` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return (epoch, *divmod(within, self.views_per_read))

    def reads(self, rank: int, start_step: int) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        """What ``rank`` reads from the group of ``start_step`` on, forever: per micro-batch of each group,
        ``(epoch, [(position in the epoch, exam index), ...])`` (``batch_size`` pairs)."""
        epoch, group, _ = self.locate(start_step)
        while True:
            order = epoch_order(self.seed, epoch, self.exams)
            for first in range(group * self.global_batch, self.exams // self.global_batch * self.global_batch,
                               self.global_batch):  # fmt: skip
                for micro in range(self.accum_steps):
                    start = first + self.chunk(micro, rank) * self.batch_size
                    yield epoch, [(p, int(order[p])) for p in range(start, start + self.batch_size)]
            epoch, group = epoch + 1, 0


class CropDataset(Dataset):
    """Item ``(epoch, [(position, exam index), ...])`` (one micro-batch of :meth:`DataPlan.reads`): the exams' crops,
    each exam read once for all its views.

    Returns ``{"image": [K, B, V, 4, *size] float16, "present": [B, 4] bool, "exam_id": [B] str}``: ``K``
    = ``views_per_read`` view pairs (``V`` = ``views`` crops each: 2 for the contrastive objectives, 1 for MAE) of
    each of the ``B`` exams; channels of absent sequences are zero.

    Args:
        dataset: the exams (its ``entries`` and ``cache``; only each box's voxels are read from the memory map).
        size: crop size per spatial axis.
        centres, jitter: tumour crops: boxes centred on ``centres[exam_id]`` (``[3]`` voxels), give or take
            ``jitter`` (see :func:`umbif.train.augment.crop_starts`); None: uniform boxes.
    """

    def __init__(
        self,
        dataset: CacheDataset,
        size: tuple[int, int, int],
        views_per_read: int,
        views: int,
        seed: int,
        centres: dict[str, torch.Tensor] | None = None,
        jitter: int = 0,
    ):
        self.dataset, self.size, self.seed = dataset, tuple(size), seed
        self.views_per_read, self.views = views_per_read, views
        self.centres, self.jitter = centres, jitter

    def __getitem__(self, key: tuple[int, list[tuple[int, int]]]) -> dict[str, Any]:
        epoch, picks = key
        images = _batch_tensor((self.views_per_read, len(picks), self.views, len(SEQUENCES), *self.size))
        out = images.numpy()  # [K, B, V, 4, *size], filled in place: one copy from the page cache
        present = torch.zeros(len(picks), len(SEQUENCES), dtype=torch.bool)
        cx, cy, cz = self.size
        for b, (position, exam) in enumerate(picks):
            entry = self.dataset.entries[exam]
            stored = self.dataset.cache.load(entry["exam_id"], "image")  # [P, X, Y, Z] float16, memory-mapped
            have = np.array([s in entry["sequences"] for s in SEQUENCES])
            present[b] = torch.from_numpy(have)
            boxes = self.views_per_read * self.views
            draws = torch.from_numpy(np.random.default_rng([self.seed, epoch, position]).random((boxes, 3)))
            centre = self.centres[entry["exam_id"]].expand(boxes, 3) if self.centres is not None else None
            starts = crop_starts(draws, stored.shape[1:], self.size, centre, self.jitter)
            for (k, v), (x, y, z) in zip(product(range(self.views_per_read), range(self.views)), starts, strict=True):
                crop = stored[:, x : x + cx, y : y + cy, z : z + cz]  # a view: only these voxels are read
                if have.all():
                    out[k, b, v] = crop
                else:
                    out[k, b, v][have] = crop
                    out[k, b, v][~have] = 0
        return {"image": images, "present": present, "exam_id": [self.dataset.entries[e]["exam_id"] for _, e in picks]}


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty float16 tensor; in a loader worker, in shared memory from the start (as torch's ``default_collate``
    allocates its batches), so that handing it to the training process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float16)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 2)  # 2 bytes per float16
    return torch.empty(0, dtype=torch.float16).set_(storage).view(shape)


def crop_loader(
    views: CropDataset, plan: DataPlan, info: DistInfo, start_step: int, num_workers: int = 0, prefetch_factor: int = 2
) -> DataLoader:
    """A loader of this rank's reads from ``start_step``'s group on (endless: the loop decides when to stop).

    Args:
        num_workers: processes cutting the crops (0: the training process). Each is seeded from
            ``(seed, rank, worker)`` and ignores SIGUSR1 and SIGTERM (:func:`umbif.train.distributed.seed_worker`).
        prefetch_factor: reads each worker prepares ahead.
    """
    return DataLoader(
        views,
        batch_size=None,  # an item is already one micro-batch
        sampler=plan.reads(info.rank, start_step),  # type: ignore[arg-type]  # an endless iterable of keys
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=partial(seed_worker, seed=plan.seed, rank=info.rank),
        pin_memory=info.device.type == "cuda",
        generator=torch.Generator().manual_seed(derived_seed(plan.seed, info.rank)),  # workers' base seed, per rank
    )


def step_batches(loader: DataLoader, plan: DataPlan, start_step: int) -> Iterator[list[dict[str, Any]]]:
    """Per optimiser step from ``start_step`` on, this rank's ``accum_steps`` micro-batches:
    ``{"image": [B, V, 4, *size] float16, "present": [B, 4], "exam_id"}`` each. A step in the middle of a group
    reads the group again and skips the views already used."""
    reads = iter(loader)
    skip = plan.locate(start_step)[2]
    while True:
        group = [next(reads) for _ in range(plan.accum_steps)]
        for view in range(skip, plan.views_per_read):
            yield [{**read, "image": read["image"][view]} for read in group]
        skip = 0
