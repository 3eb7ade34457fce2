"""The few lines DDP needs: start-up from torchrun's or Slurm's environment, seeding (of the processes and
of their loader workers), the collectives of the contrastive loss, and two small agreements between ranks
(a flag any rank raised, a value rank 0 decided). Without a launcher everything works as one process.

Launch (one node, 4 GPUs): ``torchrun --standalone --nproc_per_node 4 -m umbif pretrain ...``, or under
Slurm, one task per GPU: ``srun --ntasks-per-node 4 --gpus-per-task 1 umbif pretrain ...``.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


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


def launch_env(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """Where this process sits, from the launcher's environment: torchrun's ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK`` (it also sets ``MASTER_ADDR`` and ``MASTER_PORT``), or, where those are absent, Slurm's
    ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (``SLURM_NTASKS`` without it) and ``SLURM_LOCALID`` of a task
    started by ``srun``, with ``MASTER_ADDR`` from the environment or ``SLURM_LAUNCH_NODE_IPADDR`` and
    ``MASTER_PORT`` from the environment or ``15000 + the last four digits of SLURM_JOB_ID`` (two jobs
    sharing a node do not collide).

    Returns:
        ``{"rank", "world_size", "local_rank", "init_method"}`` (``init_method`` None for torchrun's
        ``env://``, a ``tcp://`` address under Slurm), or None for one process (no launcher, or a Slurm
        step of one task).

    Raises:
        RuntimeError: a launcher's variables are incomplete or not numbers (names them).
    """
    try:
        if "RANK" in environ:
            rank, world_size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
            return {"rank": rank, "world_size": world_size, "local_rank": int(environ.get("LOCAL_RANK", rank)),
                    "init_method": None}  # fmt: skip
    except (KeyError, ValueError) as error:
        raise RuntimeError(f"RANK is set but the torchrun environment is incomplete or invalid: {error}") from error
    if "SLURM_PROCID" not in environ:
        return None
    try:
        rank = int(environ["SLURM_PROCID"])
        world_size = int(environ.get("SLURM_STEP_NUM_TASKS") or environ["SLURM_NTASKS"])
        local_rank = int(environ.get("SLURM_LOCALID", 0))
        if world_size == 1:
            return None
        address = environ.get("MASTER_ADDR") or environ["SLURM_LAUNCH_NODE_IPADDR"]
        port = int(environ.get("MASTER_PORT") or 15000 + int(environ["SLURM_JOB_ID"][-4:]))
    except (KeyError, ValueError) as error:
        raise RuntimeError(
            f"SLURM_PROCID is set but the Slurm environment is incomplete or invalid: {error}; start the processes "
            "with srun (one task per GPU), or set MASTER_ADDR and MASTER_PORT"
        ) from error
    return {"rank": rank, "world_size": world_size, "local_rank": local_rank, "init_method": f"tcp://{address}:{port}"}


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun or ``srun`` describes (:func:`launch_env`), or run as a single process
    on ``cuda:0`` or the CPU.

    Args:
        backend: ``None`` picks ``nccl`` when CUDA is available and ``gloo`` otherwise.

    Returns:
        This process's :class:`DistInfo`; with CUDA, its device (``cuda:LOCAL_RANK``, or the one GPU a task
        sees when the launcher gave each task its own) is also made the current one.
    """
    cuda = torch.cuda.is_available()
    launch = launch_env(os.environ)
    if launch is None:
        return DistInfo(0, 1, 0, torch.device("cuda", 0) if cuda else torch.device("cpu"))
    rank, world_size, local_rank = launch["rank"], launch["world_size"], launch["local_rank"]
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend or ("nccl" if cuda else "gloo"),
        init_method=launch["init_method"],
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


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (one all-reduce; a single process gets ``flag``)."""
    if not _initialized():
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object, e.g. the checkpoint rank 0 found), so that the ranks
    act on one decision even where a shared file system shows them different things for a moment."""
    if not _initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_worker(worker_id: int, seed: int = 0, rank: int = 0) -> None:
    """``worker_init_fn`` of a data loader (bind ``seed`` and ``rank`` with ``functools.partial``): seeds Python,
    NumPy and torch in worker ``worker_id`` of rank ``rank`` from ``(seed, rank, worker_id)``, distinct for
    every worker of every rank; and lets the worker ignore SIGUSR1 and SIGTERM, which a scheduler sends to
    every process of a job: the main process decides when to stop (:mod:`umbif.train.lifecycle`) and ends
    its workers itself."""
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))
    torch.manual_seed(int(state[1]))
    for name in ("SIGUSR1", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
