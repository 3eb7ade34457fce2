"""A tiny training run for the resume tests: an MLP with dropout on augmented 4-channel volumes,
AdamW and a warm-up cosine schedule, checkpointed every few steps. Every source of randomness the
real loop has is here: augmentation from a named generator, dropout and batch choice from the global
torch RNG, NumPy and Python draws.

Run: ``python tiny_train.py RUN_DIR --steps 12 --every 3 [--resume] [--delay 0.2]``; writes
``RUN_DIR/final.safetensors`` when it finishes.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from umbif.train.augment import AugmentConfig, augment
from umbif.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from umbif.train.distributed import seed_everything
from umbif.train.schedule import warmup_cosine

AUGMENT = AugmentConfig(
    crop=(4, 4, 4), flip_axes=(0, 1), gamma_prob=0.5, bias_prob=0.5, bias_grid=2, noise_prob=0.5, noise_std=(0, 0.2)
)


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    images = torch.randn(16, 4, 6, 6, 6, generator=g).half()
    present = torch.rand(16, 4, generator=g) < 0.8
    images[~present] = 0
    return images, present, torch.randn(16, 1, generator=g)


def train(run_dir: str | Path, steps: int, every: int, resume: bool = False, stop_at: int | None = None,
          delay: float = 0.0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Train to ``steps`` (or stop early, without saving, at ``stop_at``); return the final weights."""
    config = {"lr": 1e-2, "warmup": 3, "total_steps": steps, "augment": AUGMENT.to_dict()}
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.GELU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.05)
    scheduler = warmup_cosine(optimizer, config["warmup"], steps, min_lr_ratio=0.1)
    generator = torch.Generator().manual_seed(1)
    start = 0
    if resume and latest_checkpoint(run_dir) is not None:
        state = load_checkpoint(run_dir, model, optimizer, scheduler, generators={"augment": generator}, config=config)
        start = state["step"]
    images, present, target = _data()
    for step in range(start, steps):
        if step == stop_at:
            break
        index = torch.randperm(16)[:4]  # global torch RNG
        jitter = float(np.random.uniform(0.9, 1.1)) * random.uniform(0.9, 1.1)  # NumPy and Python RNGs
        views = augment(images[index], present[index], AUGMENT, generator)
        loss = ((model(views) - target[index] * jitter) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % every == 0:
            save_checkpoint(run_dir, step + 1, model, optimizer, scheduler, config=config,
                            generators={"augment": generator}, keep=2)  # fmt: skip
        time.sleep(delay)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if stop_at is None:
        save_file(weights, str(Path(run_dir) / "final.safetensors"))
    return weights


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever the machine's load
    train(args.run_dir, args.steps, args.every, resume=args.resume, delay=args.delay)
