"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (as in MAE and nanoGPT)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate of optimiser step ``step`` (counted from 0).

    Warm-up: ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already
    learns; the last warm-up step reaches ``base_lr``). Then cosine from ``base_lr`` at ``warmup_steps``
    down to ``min_lr`` at ``total_steps``, and ``min_lr`` after it.

    Example:
        >>> lr_at(0, 1e-3, warmup_steps=10, total_steps=100)
        0.0001
    """
    if warmup_steps < 0 or total_steps < warmup_steps or total_steps < 1:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got {warmup_steps} and {total_steps}"
        )
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> LambdaLR:
    """A ``LambdaLR`` that follows :func:`lr_at` for every parameter group, relative to the group's own
    learning rate (``min_lr = min_lr_ratio * lr``). Call ``scheduler.step()`` after each optimiser step.

    Its ``state_dict()`` holds plain numbers only (the factor is a closure, which ``LambdaLR`` leaves out),
    so it goes into a checkpoint's JSON.
    """
    lr_at(0, 1.0, warmup_steps, total_steps)  # validates the arguments now rather than at the first step

    def factor(step: int) -> float:
        return lr_at(step, 1.0, warmup_steps, total_steps, min_lr_ratio)

    return LambdaLR(optimizer, factor)
