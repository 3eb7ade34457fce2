"""``umbif pretrain``: hybrid self-supervised pretraining of UMBIF on an exam cache.

One process by default; the same code under ``torchrun --nproc_per_node N`` (or ``srun``, one task per GPU) runs
DistributedDataParallel (the lines marked ``# DDP``). Read top to bottom: config, data, resume, model and
optimiser, the loop.

Exact resume: nothing random is carried from step to step. The exams of a step and their crops follow from
``(seed, epoch, position)``, the device-side augmentations and masks from ``(seed, step, chunk)``
(:mod:`umbif.train.views`); the checkpoint holds the weights, the optimiser and scheduler state and the
contrastive queue. So a run killed and resumed reaches the same weights as one that never stopped, and a run
resumed on another number of processes (same global batch, through accumulation) sees the same batches.
Cluster life (``--resume-mode auto``, SIGUSR1/SIGTERM, asynchronous checkpoints) is in :mod:`umbif.train.lifecycle`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
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
from umbif.train.augment import AugmentConfig, augment, tumour_box_centre
from umbif.train.checkpoint import DEFAULT_IGNORE, check_compatible, load_checkpoint, read_state
from umbif.train.device import autocast_dtype
from umbif.train.distributed import (
    DistInfo,
    all_gather_with_grad,
    any_rank,
    cleanup,
    from_main,
    init_distributed,
    reduce_mean,
)
from umbif.train.lifecycle import (
    AsyncCheckpointer,
    Preempted,
    ResumeMode,
    StopSignal,
    find_checkpoint,
    fit_global_batch,
)
from umbif.train.logging import MetricsLogger
from umbif.train.schedule import warmup_cosine
from umbif.train.views import CropDataset, DataPlan, crop_loader, derived_seed, step_batches
from umbif.utils import write_json

CROP = (64, 64, 64)  # default model input: random crops of the cached 96^3 exams
DATA_ORDER = "global"  # checkpoints record it: the data order of umbif.train.views (earlier runs cannot continue)
# settings a resume may change: the accumulation follows the global batch (fit_global_batch), the rest is bookkeeping
RESUME_IGNORE = (*DEFAULT_IGNORE, "warmup_steps", "preview_every", "accum_steps", "prefetch_factor")
log = logging.getLogger(__name__)


class PretrainConfig(FrozenConfig):
    """Everything a pretraining run depends on; saved in the run folder and in every checkpoint."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(image_size=CROP))
    augment: AugmentConfig = Field(default_factory=AugmentConfig)  # its crop is the model's image_size
    batch_size: int = 8  # exams per micro-batch and rank (global batch: batch_size * accum_steps * ranks)
    accum_steps: int = 1  # micro-batches per optimiser step (chosen on resume to keep the checkpoint's global batch)
    total_steps: int = 2000  # optimiser steps
    warmup_steps: int = 100  # linear warm-up, then cosine decay
    lr: float = 1.5e-4  # peak learning rate (per global batch of batch_size * accum_steps * ranks)
    min_lr_ratio: float = 0.05  # final lr = lr * min_lr_ratio
    weight_decay: float = 0.05  # AdamW, not on biases, norms, tokens and embeddings
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW (MAE's)
    clip_grad: float = 1.0  # max global gradient norm; 0 = off
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 autocast where the device supports it
    seed: int = 0  # non-negative; with the global batch it decides every exam, crop, augmentation and mask
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 200  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # older ones are deleted
    preview_every: int = 500  # steps between reconstruction previews (0: only at the end)
    num_workers: int = 0  # loader processes per rank that cut the crops (0: the training process)
    prefetch_factor: int = 2  # reads each loader process prepares ahead (with num_workers > 0)
    views_per_read: int = 1  # view pairs cut from one read of an exam, for as many consecutive steps
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
        counts = (self.batch_size, self.accum_steps, self.total_steps, self.log_every, self.checkpoint_every,
                  self.prefetch_factor, self.views_per_read)  # fmt: skip
        if min(counts) < 1:
            raise ValueError("batch_size, accum_steps, total_steps, log_every, checkpoint_every, prefetch_factor and "
                             "views_per_read must be >= 1")  # fmt: skip
        if min(self.crop_jitter, self.num_workers, self.seed) < 0:
            raise ValueError("crop_jitter, num_workers and seed must not be negative")
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
            seg = torch.from_numpy(np.array(dataset.cache.load(entry["exam_id"], "masks")[1]))  # [X, Y, Z]
            centre = tumour_box_centre(seg)
            if centre is not None:
                centres[entry["exam_id"]] = centre
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
    resume: bool | ResumeMode = False,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Pretrain UMBIF on the exams of a cache.

    Args:
        cache: a :class:`umbif.data.cache.Cache` or the folder ``umbif preprocess`` wrote; its grid must be at
            least ``model.image_size``.
        run_dir: where checkpoints, metrics.jsonl, previews and config.json go.
        exam_ids: train on these exams only (e.g. a manifest's); default every cached exam.
        resume: ``"auto"`` continues the run's latest checkpoint if there is one and starts otherwise; ``"yes"``
            (True) continues it (error if there is none); ``"no"`` (False) starts (error if the folder holds a run).
        on_step: called on rank 0 after every optimiser step with (step, total, losses).

    Returns:
        ``{"step", "loss", "loss_rec", "loss_con", "seconds", "run_dir", "exams"}`` of the last step (rank 0);
        with ``crop="tumour"`` also ``"skipped_without_tumour"`` (exams left out: no segmented tumour).

    Raises:
        ValueError: too few exams for one global batch, a cache grid smaller than the model input, a
            checkpoint made with other settings or on other exams, or a global batch the processes cannot make up.
        Preempted: SIGUSR1 or SIGTERM reached a rank; every rank stopped after the same step, checkpointed.
    """
    run_dir = Path(run_dir)
    info: DistInfo = init_distributed()  # DDP: reads torchrun's (or Slurm's) environment; one process otherwise
    is_main = info.rank == 0
    torch.manual_seed(config.seed + info.rank)  # the model's initial weights (DDP copies rank 0's)

    # ---- data: the exams (crops are cut from them in the loader, below)
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
    fingerprint = data_fingerprint(dataset.cache.fingerprint, [e["exam_id"] for e in dataset.entries])

    # ---- resume: which checkpoint, and the accumulation that keeps its global batch at this world size
    checkpoint = from_main(find_checkpoint(run_dir, resume))  # DDP: every rank takes rank 0's checkpoint
    saved = read_state(checkpoint) if checkpoint is not None else {"extra": {}}
    if checkpoint is not None:
        if saved["extra"].get("data_order") != DATA_ORDER:
            raise ValueError(f"{checkpoint} was made by an earlier umbif whose batches depended on the number of "
                             "processes; finish it with that version, or start a new run folder")  # fmt: skip
        check_compatible(saved["config"], config.to_dict(), RESUME_IGNORE)
        accum = fit_global_batch(saved["extra"], config.batch_size, info.world_size, checkpoint)
        if accum != config.accum_steps:
            log.warning("%s: global batch %d kept at %d processes with %d accumulation steps (was %d)",
                        checkpoint, saved["extra"]["global_batch"], info.world_size, accum,
                        saved["extra"]["accum_steps"])  # fmt: skip
            config = config.model_copy(update={"accum_steps": accum})
    plan = DataPlan(len(dataset), config.batch_size, config.accum_steps, info.world_size, config.views_per_read,
                    config.seed)  # fmt: skip
    if plan.steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} exams cannot fill one global batch of {plan.global_batch} (batch_size "
            f"{config.batch_size} x accum_steps {config.accum_steps} x {info.world_size} processes); lower --batch-size"
        )

    # ---- model, optimiser, schedule
    model = UMBIFPretrainer(config.model).to(info.device)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.total_steps, config.min_lr_ratio)
    step = 0
    if checkpoint is not None:  # the saved RNG states are rank 0's; nothing in the loop draws from them
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, config=config.to_dict(),
                                ignore=RESUME_IGNORE, restore_rng=is_main)  # fmt: skip
        if saved["extra"].get("data_fingerprint") != fingerprint:
            raise ValueError(f"{checkpoint} was trained on other exams (data fingerprint differs)")
        step = int(state["step"])
    record = {"data_fingerprint": fingerprint, "data_order": DATA_ORDER, "world_size": info.world_size,
              "global_batch": plan.global_batch, "batch_size": config.batch_size,
              "accum_steps": config.accum_steps}  # fmt: skip
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        described = {"config": config.to_dict(), "exams": len(dataset), **record}
        if centres is not None:
            described["skipped_without_tumour"] = skipped
        write_json(run_dir / "config.json", {**provenance(seed=config.seed), **described})

    pair = 1 if config.model.objective == "mae" else 2  # crops per view pair
    views = CropDataset(dataset, config.model.image_size, config.views_per_read, pair, config.seed, centres,
                        config.crop_jitter)  # fmt: skip
    loader = crop_loader(views, plan, info, step, config.num_workers, config.prefetch_factor)
    stream = step_batches(loader, plan, step)  # per step: this rank's micro-batches of float16 crops
    on_device = config.augment.model_copy(update={"crop": None})  # flips, intensities, noise: on the batch's device
    generator = torch.Generator(device=info.device)  # reseeded per micro-batch from (seed, step, chunk)
    ddp_model = model
    if info.world_size > 1:  # DDP
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    gather = other_ranks if info.world_size > 1 else None  # DDP: negatives from every rank
    amp = autocast_dtype(config.amp, info.device)
    logger = MetricsLogger(run_dir, is_main, resume_step=step)
    preview_exam = {"image": first["image"][None], "present": first["present"][None]}  # a batch of one

    # ---- the loop
    start, last, stop = time.time(), {}, False
    model.train()
    with StopSignal() as signals, AsyncCheckpointer(run_dir, config.keep_checkpoints) as checkpointer:
        while step < config.total_steps and not stop:
            totals = {"loss": 0.0, "loss_rec": 0.0, "loss_con": 0.0}
            for micro, batch in enumerate(next(stream)):
                generator.manual_seed(derived_seed(config.seed, step, plan.chunk(micro, info.rank)))
                crops = batch["image"].to(info.device, non_blocking=True)  # [B, V, S, X, Y, Z] float16
                present = batch["present"].to(info.device)  # [B, S]
                view1 = augment(crops[:, 0], present, on_device, generator)  # [B, S, X, Y, Z] float32
                view2 = augment(crops[:, 1], present, on_device, generator) if crops.shape[1] > 1 else None
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
            stop = any_rank(signals.requested, info.device)  # DDP: a signal to any rank stops all after this step
            if is_main and (step % config.checkpoint_every == 0 or step == config.total_steps or stop):
                checkpointer.save(step, model, optimizer, scheduler, config=config.to_dict(), extra=record)
            if is_main and config.model.objective != "contrastive" and _preview_due(step, config):
                _preview(model, preview_exam, run_dir / "previews" / f"step_{step:06d}.png", info.device, config.seed)
            if is_main and on_step is not None:
                on_step(step, config.total_steps, last)
    stream.close()  # ends the loader's workers
    logger.close()
    if info.world_size > 1:  # DDP: leave together, after rank 0's last checkpoint; a live group at exit can abort
        dist.barrier()
        cleanup()
    if stop and step < config.total_steps:  # a signal during the last step changes nothing: the run is done
        raise Preempted(step, signals.name or "a signal to another rank", checkpointer.last)
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
