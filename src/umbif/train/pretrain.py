"""``umbif pretrain``: hybrid self-supervised pretraining of UMBIF on an exam cache.

One process by default; the same code under ``torchrun --nproc_per_node N`` runs DistributedDataParallel
(the lines marked ``# DDP``). Read top to bottom: config, data, model and optimiser, resume, the loop.

Exact resume: everything random is either saved in the checkpoint (global RNGs, the training generator
that draws augmentations and masks, optimiser and scheduler state, the contrastive queue) or derived
from the step (which batches come next: epoch = step // steps per epoch, reshuffled from ``seed + epoch``),
so a run killed and resumed reaches the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from umbif.config import FrozenConfig
from umbif.data.cache import Cache
from umbif.data.datasets import CacheDataset
from umbif.models.umbif import PRESETS, ModelConfig, UMBIFPretrainer, count_parameters
from umbif.provenance import provenance
from umbif.train.augment import AugmentConfig, augment, two_views
from umbif.train.checkpoint import DEFAULT_IGNORE, latest_checkpoint, load_checkpoint, save_checkpoint
from umbif.train.device import autocast_dtype
from umbif.train.distributed import (
    DistInfo,
    all_gather_with_grad,
    cleanup,
    init_distributed,
    make_loader,
    reduce_mean,
)
from umbif.train.logging import MetricsLogger
from umbif.train.schedule import warmup_cosine
from umbif.utils import write_json

CROP = (64, 64, 64)  # default model input: random crops of the cached 96^3 exams
log = logging.getLogger(__name__)


class PretrainConfig(FrozenConfig):
    """Everything a pretraining run depends on; saved in the run folder and in every checkpoint."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(image_size=CROP))
    augment: AugmentConfig = Field(default_factory=AugmentConfig)  # its crop is the model's image_size
    batch_size: int = 8  # exams per step and rank (before accumulation)
    accum_steps: int = 1  # micro-batches per optimiser step
    total_steps: int = 2000  # optimiser steps
    warmup_steps: int = 100  # linear warm-up, then cosine decay
    lr: float = 1.5e-4  # peak learning rate (per global batch of batch_size * accum_steps * ranks)
    min_lr_ratio: float = 0.05  # final lr = lr * min_lr_ratio
    weight_decay: float = 0.05  # AdamW, not on biases, norms, tokens and embeddings
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW (MAE's)
    clip_grad: float = 1.0  # max global gradient norm; 0 = off
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 autocast where the device supports it
    seed: int = 0
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 200  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # older ones are deleted
    preview_every: int = 500  # steps between reconstruction previews (0: only at the end)
    num_workers: int = 0  # data loader processes per rank
    crop: Literal["random", "tumour"] = "random"  # tumour: boxes centred on each exam's segmented tumour (SSL-Cerebral)
    crop_jitter: int = 8  # tumour crops: the box centre moves up to this many voxels per axis, per view

    @model_validator(mode="before")
    @classmethod
    def _crop_is_image_size(cls, data: Any) -> Any:
        """The augmentation crops exactly the model's input; a crop set in YAML must agree."""
        if isinstance(data, dict):
            model = data.get("model", {})
            model = model.model_dump() if isinstance(model, ModelConfig) else dict(model)
            size = tuple(model.setdefault("image_size", CROP))
            aug = data.get("augment", {})
            aug = aug.model_dump() if isinstance(aug, AugmentConfig) else dict(aug)
            if aug.get("crop") not in (None, size, list(size)):
                raise ValueError(f"augment.crop {aug['crop']} must equal model.image_size {size} (or be left out)")
            data = {**data, "augment": {**aug, "crop": size}, "model": model}
        return data

    @model_validator(mode="after")
    def _positive(self) -> PretrainConfig:
        if min(self.batch_size, self.accum_steps, self.total_steps, self.log_every, self.checkpoint_every) < 1:
            raise ValueError("batch_size, accum_steps, total_steps, log_every and checkpoint_every must be >= 1")
        if self.crop_jitter < 0:
            raise ValueError(f"crop_jitter must not be negative, got {self.crop_jitter}")
        return self

    @classmethod
    def lay_over(cls, settings: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        """As for every config (:meth:`FrozenConfig.from_options`), with two rules of ``umbif pretrain``:
        a ``model.preset`` option replaces every size the file sets (a preset decides them all), and a
        ``total_steps`` option brings a fitting warm-up (a tenth, 1 to 100 steps) unless the file sets one."""
        if (options.get("model") or {}).get("preset") is not None:
            sizes = set().union(*PRESETS.values())  # the fields a preset sets
            model = {k: v for k, v in (settings.get("model") or {}).items() if k not in sizes}
            settings = {**settings, "model": model}
        steps = options.get("total_steps")
        if steps is not None and "warmup_steps" not in settings and options.get("warmup_steps") is None:
            options = {**options, "warmup_steps": max(1, min(100, steps // 10))}
        return super().lay_over(settings, options)

    def to_dict(self) -> dict[str, Any]:
        """As saved in run folders and checkpoints; the crop fields only when not ``"random"``, so runs
        started before they existed keep their config (and resume)."""
        data = super().to_dict()
        if self.crop == "random":
            del data["crop"], data["crop_jitter"]
        return data


def batches(loader, start: int) -> Iterator[dict[str, Any]]:
    """Batches from global position ``start`` (counted in micro-batches) on, across epochs."""
    per_epoch = loader.sampler.num_samples // loader.batch_size
    epoch, within = divmod(start, per_epoch)
    while True:
        loader.sampler.set_epoch(epoch, start=within * loader.batch_size)
        yield from loader
        epoch, within = epoch + 1, 0


def other_ranks(z: torch.Tensor) -> torch.Tensor:
    """Projections of the other ranks' exams, as extra contrastive negatives (gradients flow back)."""
    everyone = all_gather_with_grad(z)  # [world * n, D]
    n, rank = z.shape[0], dist.get_rank()
    return torch.cat([everyone[: rank * n], everyone[(rank + 1) * n :]])


def param_groups(model: UMBIFPretrainer, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, tokens and embeddings (MAE/timm practice)."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def tumour_centres(dataset: CacheDataset) -> tuple[dict[str, torch.Tensor], int]:
    """Keep only the exams of ``dataset`` with a non-empty tumour segmentation (in place).

    Returns the centre of each kept exam's tumour bounding box (``[3]`` float64 voxel coordinates, by
    exam id) and the number of exams dropped (no segmentation, or an empty one).
    """
    centres = {}
    for entry in dataset.entries:
        if entry.get("has_seg"):
            seg = dataset.cache.load(entry["exam_id"], "masks")[1]  # [X, Y, Z]
            spans = [np.flatnonzero(seg.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
            if spans[0].size:
                centres[entry["exam_id"]] = torch.tensor([(s[0] + s[-1]) / 2 for s in spans], dtype=torch.float64)
    skipped = len(dataset.entries) - len(centres)
    dataset.entries = [entry for entry in dataset.entries if entry["exam_id"] in centres]
    return centres, skipped


def data_fingerprint(plan_fingerprint: str, exam_ids: list[str]) -> str:
    """Which exams a run trains on: the cache's plan fingerprint and the sorted exam ids."""
    import hashlib

    return hashlib.sha256(json.dumps([plan_fingerprint, sorted(exam_ids)]).encode()).hexdigest()[:16]


def pretrain(
    cache: Cache | str | Path,
    run_dir: str | Path,
    config: PretrainConfig,
    exam_ids: list[str] | None = None,
    resume: bool = False,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Pretrain UMBIF on the exams of a cache.

    Args:
        cache: a :class:`umbif.data.cache.Cache` or the folder ``umbif preprocess`` wrote; its grid must be at
            least ``model.image_size``.
        run_dir: where checkpoints, metrics.jsonl, previews and config.json go.
        exam_ids: train on these exams only (e.g. a manifest's); default every cached exam.
        resume: continue from the run's latest checkpoint (error if there is none).
        on_step: called on rank 0 after every optimiser step with (step, total, losses).

    Returns:
        ``{"step", "loss", "loss_rec", "loss_con", "seconds", "run_dir", "exams"}`` of the last step (rank 0);
        with ``crop="tumour"`` also ``"skipped_without_tumour"`` (exams left out: no segmented tumour).

    Raises:
        ValueError: too few exams for one batch, a cache grid smaller than the model input, or a
            checkpoint made with other settings.
    """
    run_dir = Path(run_dir)
    info: DistInfo = init_distributed()  # DDP: reads torchrun's environment; one process otherwise
    is_main = info.rank == 0
    torch.manual_seed(config.seed + info.rank)

    # ---- data
    dataset = CacheDataset(cache, exam_ids=sorted(exam_ids) if exam_ids is not None else None)
    dataset.entries.sort(key=lambda entry: entry["exam_id"])  # batches do not depend on manifest row order
    if not len(dataset):
        raise ValueError(f"{dataset.cache.path} holds no exam to train on; run `umbif preprocess` first")
    centres, skipped = None, 0
    if config.crop == "tumour":  # SSL-Cerebral: only exams with a tumour, boxes centred on it
        centres, skipped = tumour_centres(dataset)
        log.info("tumour crops: %d exams with a segmented tumour, %d without skipped", len(dataset), skipped)
        if not len(dataset):
            raise ValueError(
                f"none of the {skipped} exams in {dataset.cache.path} has a segmented tumour (crop 'tumour')"
            )
    first = dataset[0]  # also the exam of the reconstruction previews
    grid = tuple(first["image"].shape[1:])
    if any(g < s for g, s in zip(grid, config.model.image_size, strict=True)):
        raise ValueError(f"the cache grid {grid} is smaller than the model input {config.model.image_size}")
    loader = make_loader(dataset, config.batch_size, info, seed=config.seed, num_workers=config.num_workers)
    if loader.sampler.num_samples < config.batch_size:
        raise ValueError(
            f"{len(dataset)} exams cannot fill one batch of {config.batch_size} on each of {info.world_size} "
            "processes; lower --batch-size"
        )

    # ---- model, optimiser, schedule
    model = UMBIFPretrainer(config.model).to(info.device)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.total_steps, config.min_lr_ratio)
    generator = torch.Generator(device=info.device).manual_seed(config.seed * 1000 + info.rank)  # views + masks
    fingerprint = data_fingerprint(dataset.cache.fingerprint, [e["exam_id"] for e in dataset.entries])

    step = 0
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise ValueError(f"{run_dir} has no checkpoint to resume from; start without --resume")
        # the saved RNG states are rank 0's: other ranks reseed from the step (reproducible, and a
        # single-process resume stays bitwise exact)
        state = load_checkpoint(
            checkpoint, model, optimizer, scheduler, generators={"train": generator} if is_main else None,
            config=config.to_dict(), ignore=(*DEFAULT_IGNORE, "warmup_steps", "preview_every"), restore_rng=is_main,
        )  # fmt: skip
        if state.get("extra", {}).get("data_fingerprint") not in (None, fingerprint):
            raise ValueError(f"{checkpoint} was trained on other exams (data fingerprint differs)")
        step = int(state["step"])
        if not is_main:  # DDP
            torch.manual_seed(config.seed + info.rank + 7919 * step)
            generator.manual_seed(config.seed * 1000 + info.rank + 7919 * step)
    elif is_main and latest_checkpoint(run_dir) is not None:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {"config": config.to_dict(), "data_fingerprint": fingerprint, "exams": len(dataset)}
        if centres is not None:
            record["skipped_without_tumour"] = skipped
        write_json(run_dir / "config.json", {**provenance(seed=config.seed), **record})

    ddp_model = model
    if info.world_size > 1:  # DDP
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    gather = other_ranks if info.world_size > 1 else None  # DDP: negatives from every rank
    amp = autocast_dtype(config.amp, info.device)
    logger = MetricsLogger(run_dir, is_main, resume_step=step)
    stream = batches(loader, step * config.accum_steps)
    preview_exam = {"image": first["image"][None], "present": first["present"][None]}  # a batch of one

    # ---- the loop
    start, last = time.time(), {}
    model.train()
    while step < config.total_steps:
        totals = {"loss": 0.0, "loss_rec": 0.0, "loss_con": 0.0}
        for micro in range(config.accum_steps):
            batch = next(stream)
            images = batch["image"].to(info.device, non_blocking=True)  # [B, S, X, Y, Z] float16: cropped first
            present = batch["present"].to(info.device)  # [B, S]
            boxes = torch.stack([centres[e] for e in batch["exam_id"]]) if centres is not None else None  # [B, 3]
            crop = {"centres": boxes, "jitter": config.crop_jitter}
            if config.model.objective == "mae":
                view1, view2 = augment(images, present, config.augment, generator, **crop), None
            else:
                view1, view2 = two_views(images, present, config.augment, generator, **crop)
            sync = micro == config.accum_steps - 1 or info.world_size == 1
            context = ddp_model.no_sync() if not sync else nullcontext()  # DDP: all-reduce once per step
            with context, torch.autocast(info.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = ddp_model(view1, view2, present, generator=generator, gather_negatives=gather)
                (out["loss"] / config.accum_steps).backward()
            for key in totals:
                totals[key] += float(out[key].detach()) / config.accum_steps
        if config.clip_grad > 0:
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if info.world_size > 1:  # DDP: report the mean over ranks
            totals = {k: float(reduce_mean(torch.tensor(v, device=info.device))) for k, v in totals.items()}
        if not all(math.isfinite(v) for v in totals.values()):
            raise FloatingPointError(f"step {step}: loss is not finite ({totals}); lower --lr or use --amp off")
        last = {**totals, "lr": scheduler.get_last_lr()[0]}
        if is_main and (step % config.log_every == 0 or step == config.total_steps):
            logger.log(step, {**last, "exams_per_s": _rate(step, start, config, info)})
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            if is_main:
                save_checkpoint(
                    run_dir, step, model, optimizer, scheduler, config=config.to_dict(),
                    extra={"data_fingerprint": fingerprint}, generators={"train": generator},
                    keep=config.keep_checkpoints,
                )  # fmt: skip
            if info.world_size > 1:  # DDP: nobody runs ahead of the checkpoint
                dist.barrier()
        if is_main and config.model.objective != "contrastive" and _preview_due(step, config):
            _preview(model, preview_exam, run_dir / "previews" / f"step_{step:06d}.png", info.device, config.seed)
        if is_main and on_step is not None:
            on_step(step, config.total_steps, last)
    logger.close()
    if info.world_size > 1:  # DDP: leave together, after rank 0's last preview; a live group at exit can abort
        dist.barrier()
        cleanup()
    done = {**last, "step": step, "seconds": time.time() - start, "run_dir": str(run_dir), "exams": len(dataset)}
    return done | ({"skipped_without_tumour": skipped} if centres is not None else {})


def _rate(step: int, start: float, config: PretrainConfig, info: DistInfo) -> float:
    seconds = max(time.time() - start, 1e-9)
    return step * config.batch_size * config.accum_steps * info.world_size / seconds


def _preview_due(step: int, config: PretrainConfig) -> bool:
    every = config.preview_every
    return step == config.total_steps or (every > 0 and step % every == 0)


def _preview(model: UMBIFPretrainer, exam: dict[str, Any], path: Path, device: torch.device, seed: int) -> None:
    """Input / masked input / reconstruction of one exam's middle slices, per present sequence."""
    from umbif import SEQUENCES
    from umbif.train.augment import random_crop
    from umbif.viz import plot_reconstruction

    generator = torch.Generator(device=device).manual_seed(seed)  # the same crop and mask every time
    images = exam["image"].to(device, torch.float32)
    images = random_crop(images, model.config.image_size, generator)
    present = exam["present"].to(device)
    was_training = model.training
    model.eval()
    pred, masked = model.reconstruct(images, present, generator)
    model.train(was_training)
    names = [s for s, p in zip(SEQUENCES, present[0].tolist(), strict=True) if p]
    keep = present[0].cpu()
    plot_reconstruction(
        images[0, keep].cpu().numpy(), masked[0, keep].cpu().numpy(), pred[0, keep].cpu().numpy(), names, path
    )


def describe(config: PretrainConfig) -> str:
    """One line about the model a run trains (parameter count from a real instance)."""
    model = UMBIFPretrainer(config.model)
    c = config.model
    return (
        f"UMBIF {c.preset} ({count_parameters(model) / 1e6:.2f} M parameters; encoder {c.dim} wide, {c.depth} "
        f"deep; {c.num_patches} patches of {c.patch_size}^3 per sequence), objective {c.objective}"
        + (f", crops centred on the tumour (+-{config.crop_jitter} voxels)" if config.crop == "tumour" else "")
    )
