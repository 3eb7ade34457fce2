"""The supervised training loop: a multi-task model on the labelled, cached exams, one head per task.

Shared by fine-tuning the pretrained encoder (``umbif.adapt.finetune``) and the 3D CNN baselines
trained from scratch (``umbif.baselines.cnn``): the model comes from a builder and its parameter groups
from a function, so both run through the same items (``umbif.data.samples.build_items``), masked loss
(``umbif.train.losses``), inner split, early stopping and thresholds.

Read top to bottom: config, the item dataset, the pure pieces (layer-wise learning rates, inner split),
the trained model, the loop (:func:`fit_multitask`), prediction (:func:`predict`) and one fold of
cross-validation (:func:`fit_and_predict`).

Everything chosen from data — early stopping, the decision threshold (Youden J, by
``umbif.metrics.choose_threshold`` as for the probe) and the class weights — comes from the training
tables only: an inner validation split of the training *patients* (grouped, stratified), never the test rows.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import model_validator
from torch.utils.data import DataLoader, Dataset

from umbif.config import FrozenConfig
from umbif.data.cache import Cache
from umbif.data.datasets import CacheDataset
from umbif.data.samples import Items, build_items, check_task
from umbif.metrics import choose_threshold, roc_auc
from umbif.models.heads import MultiTaskModel
from umbif.models.umbif import ModelConfig, UMBIFEncoder
from umbif.train.augment import AugmentConfig, augment
from umbif.train.device import autocast_dtype as pretrain_autocast
from umbif.train.device import pick_device
from umbif.train.distributed import seed_everything
from umbif.train.losses import masked_bce
from umbif.train.schedule import warmup_cosine
from umbif.utils import json_text, write_text_atomic

# light augmentation for supervised training: left-right flips and a small per-sequence scale/shift, whole grid
LIGHT_AUGMENT = AugmentConfig(
    crop=None,
    flip_prob=0.5,
    gamma_prob=0.0,
    bias_prob=0.0,
    intensity_prob=0.5,
    scale=(0.95, 1.05),
    shift=(-0.05, 0.05),
    noise_prob=0.0,
)


class TrainConfig(FrozenConfig):
    """The training loop's settings (:func:`fit_multitask`): epochs, optimiser, early stopping, inner split.

    Shared by fine-tuning (:class:`FinetuneConfig`) and the CNN baselines (``umbif.baselines.cnn.CNNConfig``),
    which add their model's settings.

    Example:
        >>> TrainConfig(epochs=10).patience
        5
    """

    epochs: int = 30  # maximum passes over the training items (early stopping may end sooner)
    batch_size: int = 4  # items per step (a pair counts once but is encoded twice)
    lr: float = 5e-4  # peak learning rate (of the heads when the model has layer-wise rates)
    weight_decay: float = 0.05  # AdamW; none on biases, norms and the model's no_weight_decay() names
    warmup_epochs: int = 1  # linear warm-up, then cosine decay per step
    min_lr_ratio: float = 0.01  # final lr = lr * min_lr_ratio
    clip_grad: float = 1.0  # max global gradient norm; 0 = off
    patience: int = 5  # stop after this many epochs without improvement of the monitored value
    monitor: Literal["loss", "auc"] = "loss"  # inner-validation loss (lower) or mean AUC over tasks (higher)
    val_fraction: float = 0.2  # share of training patients held out as the inner validation split
    pos_weight: bool = True  # weigh positives by n_negative / n_positive per task (training prevalence)
    augment: AugmentConfig | None = LIGHT_AUGMENT  # flips + light intensity; None: no augmentation
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 autocast on CUDA where supported, off on the CPU
    seed: int = 0  # model initialisation, batch order, augmentation, inner split
    num_workers: int = 0  # data loader processes

    @model_validator(mode="after")
    def _check_training(self) -> TrainConfig:
        if min(self.epochs, self.batch_size, self.patience) < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        if not 0.0 < self.val_fraction <= 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5], got {self.val_fraction}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.augment is not None and self.augment.crop is not None:
            raise ValueError("augment.crop must be null: training sees the whole cache grid")
        return self


# ----------------------------------------------------------------------------- items


class ItemDataset(Dataset):
    """Items as tensors from the exam cache: ``image`` ``[4, X, Y, Z]`` float16, ``present`` ``[4]``,
    ``labels`` ``[T]`` (NaN = missing), and for pairs ``baseline_image``/``baseline_present`` (else None)."""

    def __init__(self, cache: CacheDataset, items: Items):
        self.cache = cache
        self.items = items
        self.position = {entry["exam_id"]: i for i, entry in enumerate(cache.entries)}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        exam = self.cache[self.position[self.items.exam_ids[index]]]
        baseline_id = self.items.baseline_ids[index]
        baseline = self.cache[self.position[baseline_id]] if baseline_id else None
        return {
            "image": exam["image"],
            "present": exam["present"],
            "labels": torch.from_numpy(self.items.labels[index]),
            "baseline_image": baseline["image"] if baseline else None,
            "baseline_present": baseline["present"] if baseline else None,
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items; ``paired`` ``[B]`` marks pairs, whose baselines stack to ``[P, 4, X, Y, Z]`` (None if P = 0)."""
    paired = torch.tensor([item["baseline_image"] is not None for item in batch])
    pairs = [item for item in batch if item["baseline_image"] is not None]
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "present": torch.stack([item["present"] for item in batch]),
        "labels": torch.stack([item["labels"] for item in batch]),
        "paired": paired,
        "baseline_image": torch.stack([item["baseline_image"] for item in pairs]) if pairs else None,
        "baseline_present": torch.stack([item["baseline_present"] for item in pairs]) if pairs else None,
    }


# ----------------------------------------------------------------------------- pure pieces


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise decay: 0 embeddings, ``i + 1`` block ``i``, ``depth + 1`` the
    final norm and the heads (BEiT's numbering)."""
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("encoder.patch_embed", "encoder.seq_embed", "encoder.cls_token")):
        return 0
    return depth + 1


def param_groups(model: MultiTaskModel, lr: float, layer_decay: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise learning-rate decay (BEiT/MAE fine-tuning).

    Parameter at layer ``l`` (:func:`layer_id`) gets ``lr * layer_decay ** (depth + 1 - l)``: the heads
    ``lr``, block ``i`` ``lr * layer_decay ** (depth - i)``, the embeddings the lowest. No weight decay on
    biases, norms (1-d tensors) and ``no_weight_decay()`` names. Frozen parameters are left out. Each
    group carries ``names`` and ``layer`` for inspection. An encoder without transformer ``blocks`` (a CNN)
    is one layer: every parameter gets ``lr``.
    """
    depth = len(getattr(model.encoder, "blocks", ()))
    skip = model.no_weight_decay()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        no_decay = param.ndim < 2 or name in skip
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "names": [],
                "layer": layer,
                "lr": lr * layer_decay ** (depth + 1 - layer),
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def inner_split(patients: Sequence[str], strata: Sequence[str], val_fraction: float, seed: int) -> np.ndarray:
    """Boolean ``[N]`` mask of the inner validation items: whole patients, stratified by ``strata``.

    One fold of a seeded ``StratifiedGroupKFold`` with ``round(1 / val_fraction)`` folds; falls back to a
    grouped random split when the strata are too small to stratify.

    Raises:
        ValueError: fewer than two patients.
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    groups = np.asarray(patients)
    n_groups = len(set(patients))
    if n_groups < 2:
        raise ValueError(f"the training data hold {n_groups} patient(s); need at least 2 for an inner validation split")
    n_splits = min(n_groups, max(2, round(1 / val_fraction)))
    index = np.arange(len(groups))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            _, val = next(splitter.split(index, np.asarray(strata), groups))
    except ValueError:
        splitter_random = GroupShuffleSplit(n_splits=1, test_size=1 / n_splits, random_state=seed)
        _, val = next(splitter_random.split(index, groups=groups))
    mask = np.zeros(len(groups), dtype=bool)
    mask[val] = True
    return mask


# ----------------------------------------------------------------------------- loop


@dataclass
class TrainedModel:
    """A trained multi-task model (:func:`fit_multitask`) and everything
    ``umbif.adapt.finetune.save_finetuned`` writes next to it."""

    model: MultiTaskModel  # the best epoch's weights, eval mode
    model_config: ModelConfig | None  # the UMBIF encoder's architecture on the cache grid; None for another backbone
    config: TrainConfig  # FinetuneConfig for the UMBIF encoder
    thresholds: dict[str, float]  # task -> decision threshold (positive when score >= threshold)
    threshold_rules: dict[str, str]  # task -> how its threshold was chosen
    n_train: dict[str, int]  # task -> labelled training samples (inner train + inner validation)
    history: list[dict[str, Any]]  # one record per epoch
    preprocess: dict[str, Any]  # the cache's PreprocessConfig, so predict preprocesses the same way
    best_epoch: int
    excluded_patients: list[str] = field(default_factory=list)  # training patients dropped (they are in the test set)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.model.tasks


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """As in pretraining, except that ``"auto"`` stays in float32 on the CPU: bf16 autocast measured
    ~1.5x slower there for the tiny encoder (no bf16 matrix units), and small cohorts gain nothing."""
    if setting == "auto" and device.type == "cpu":
        return None
    return pretrain_autocast(setting, device)


def _cache_dataset(cache: Cache, items: Items) -> CacheDataset:
    needed = items.exams_needed()
    missing = [e for e in needed if e not in cache]
    if missing:
        raise ValueError(
            f"{len(missing)} exams of the samples are not in the cache {cache.path}: {missing[:5]}; "
            "run `umbif preprocess` on their manifest or leave those samples out"
        )
    return CacheDataset(cache, needed)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _augment_batch(batch: dict[str, Any], config: AugmentConfig, generator: torch.Generator) -> dict[str, Any]:
    """Augment each item; the two exams of a pair get the same flips (as 8 channels of one exam)."""
    images, present, paired = batch["image"], batch["present"], batch["paired"]
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    baselines = batch["baseline_image"]
    if baselines is not None:
        joint = augment(
            torch.cat([images[paired], baselines], dim=1),
            torch.cat([present[paired], batch["baseline_present"]], 1),
            config,
            generator,
        )
        S = images.shape[1]
        out[paired], baselines = joint[:, :S], joint[:, S:]
    if bool((~paired).any()):
        out[~paired] = augment(images[~paired], present[~paired], config, generator)
    return {**batch, "image": out, "baseline_image": baselines}


def _forward(model: MultiTaskModel, batch: dict[str, Any], amp: torch.dtype | None, device: torch.device):
    baselines = batch["baseline_image"]
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        return model(
            batch["image"].float(),
            batch["present"],
            batch["paired"],
            None if baselines is None else baselines.float(),
            batch["baseline_present"],
        )


@torch.no_grad()
def predict_logits(
    model: MultiTaskModel, dataset: ItemDataset, batch_size: int, device: torch.device, amp: torch.dtype | None = None
) -> np.ndarray:
    """Logits ``[N, T]`` of every item of ``dataset`` (eval mode, no augmentation)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = [_forward(model, _to_device(batch, device), amp, device).cpu() for batch in loader]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.tasks)), dtype=np.float32)


def _validation_record(logits: np.ndarray, items: Items, pos_weight: torch.Tensor | None) -> dict[str, Any]:
    weight = None if pos_weight is None else pos_weight.cpu()
    record: dict[str, Any] = {
        "val_loss": float(masked_bce(torch.from_numpy(logits), torch.from_numpy(items.labels), weight))
    }
    aucs = []
    for t, task in enumerate(items.tasks):
        labelled = ~np.isnan(items.labels[:, t])
        auc = float(roc_auc(items.labels[labelled, t], logits[labelled, t]))  # nan with one class
        record[f"val_auc_{task}"] = auc
        if math.isfinite(auc):
            aucs.append(auc)
    record["val_auc"] = float(np.mean(aucs)) if aucs else math.nan
    return record


def _pos_weight(labels: np.ndarray) -> np.ndarray:
    """``n_negative / n_positive`` per task column (1 where a class is absent)."""
    positive = np.nansum(labels == 1, axis=0).astype(np.float64)
    negative = np.nansum(labels == 0, axis=0).astype(np.float64)
    ok = (positive > 0) & (negative > 0)
    return np.where(ok, negative / np.maximum(positive, 1), 1.0).astype(np.float32)


def _strata(items: Items) -> list[str]:
    """Per item, its first labelled task and label (e.g. "idh=1"): what the inner split balances."""
    out = []
    for row in items.labels:
        t = int(np.flatnonzero(~np.isnan(row))[0])
        out.append(f"{items.tasks[t]}={int(row[t])}")
    return out


def fit_multitask(
    build: Callable[[tuple[str, ...], tuple[int, int, int]], MultiTaskModel],
    groups: Callable[[MultiTaskModel], list[dict[str, Any]]],
    cache: Cache | str | Path,
    train: Mapping[str, pd.DataFrame],
    config: TrainConfig,
    device: str | torch.device | None = None,
    on_epoch: Callable[[int, int, dict[str, Any]], None] | None = None,
    exclude_patients: Sequence[str] = (),
) -> TrainedModel:
    """Train a multi-task model on the cached exams of ``train``: the loop behind fine-tuning
    (``umbif.adapt.finetune``) and the CNN baselines (``umbif.baselines.cnn``), which differ only in
    ``build`` and ``groups``.

    The training items are split into inner train and inner validation (whole patients, stratified,
    ``val_fraction``); the model trains on the first, is early-stopped on the second (``monitor``,
    ``patience``) and ends with its best epoch's weights. Each task's threshold is Youden's J on the
    inner validation predictions (on the inner training predictions when the validation split has one
    class of the task, 0.5 when both have one).

    Args:
        build: ``(tasks, cache grid) -> model``, called after seeding; a :class:`MultiTaskModel` (any encoder
            with ``forward_tokens``) whose heads are in ``tasks`` order.
        groups: ``model -> AdamW parameter groups`` (e.g. :func:`param_groups`).
        cache: the exam cache (a :class:`umbif.data.cache.Cache` or its folder).
        train: task -> sample table (``umbif.data.samples.SAMPLE_COLUMNS``), all rows labelled.
        config: the loop's settings.
        device: default CUDA when available, else CPU.
        on_epoch: called after each epoch with ``(epoch, max_epochs, record)``.
        exclude_patients: patients to leave out of training (e.g. those of a test fold).

    Returns:
        :class:`TrainedModel` (``model_config`` is the encoder's when it is a :class:`UMBIFEncoder`, else None).

    Raises:
        ValueError: an empty task, too few patients, exams not in the cache.
        FileNotFoundError: no cache.

    Example:
        >>> build = lambda tasks, grid: build_model(encoder, tasks, config)
        >>> result = fit_multitask(build, lambda m: param_groups(m, 1e-3, 0.75, 0.05), "cache", tables, config)
    """
    cache = cache if isinstance(cache, Cache) else Cache(cache)
    dev = pick_device(device)
    tasks = tuple(check_task(t) for t in train)
    if not tasks:
        raise ValueError("no task to train: train is empty")
    for task, table in train.items():
        if table.empty:
            raise ValueError(f"task {task!r} has no labelled training samples")
    excluded = set(exclude_patients)
    kept = {t: table[~table["patient_id"].astype(str).isin(excluded)] for t, table in train.items()}
    for task, table in kept.items():
        if table.empty:
            raise ValueError(f"task {task!r} has no training samples left after excluding the test patients")
    items = build_items(kept, tasks)
    dropped = sorted({str(p) for table in train.values() for p in table["patient_id"]} & excluded)

    dataset = _cache_dataset(cache, items)
    seed_everything(config.seed)
    model = build(tasks, cache.grid).to(dev)
    if model.tasks != tasks:
        raise ValueError(f"the model's heads {list(model.tasks)} are not the tasks {list(tasks)} in order")

    val_mask = inner_split(items.patient_ids, _strata(items), config.val_fraction, config.seed)
    inner_train, inner_val = items.subset(np.flatnonzero(~val_mask)), items.subset(np.flatnonzero(val_mask))
    train_set, val_set = ItemDataset(dataset, inner_train), ItemDataset(dataset, inner_val)
    pos_weight = torch.from_numpy(_pos_weight(inner_train.labels)).to(dev) if config.pos_weight else None

    history, best_state, best_epoch = _fit(model, groups(model), train_set, val_set, config, dev, pos_weight, on_epoch)
    model.load_state_dict(best_state)
    model.eval()

    amp = autocast_dtype(config.amp, dev)
    val_logits = predict_logits(model, val_set, config.batch_size, dev, amp)
    thresholds, rules = {}, {}
    for t, task in enumerate(tasks):
        threshold = _youden(inner_val, val_logits, t)
        rules[task] = f"youden on the inner validation split ({config.val_fraction:g} of training patients)"
        if threshold is None:  # rare: the validation patients hold one class of this task
            train_logits = predict_logits(model, train_set, config.batch_size, dev, amp)
            threshold = _youden(inner_train, train_logits, t)
            rules[task] = "youden on the inner training split (the validation split has one class)"
        if threshold is None:
            threshold, rules[task] = 0.5, "0.5 (the training data of this task have one class)"
        thresholds[task] = threshold
    n_train = {task: len(table) for task, table in kept.items()}
    encoder = model.encoder
    model_config = encoder.config if isinstance(encoder, UMBIFEncoder) else None
    return TrainedModel(
        model.cpu(), model_config, config, thresholds, rules, n_train, history, cache.preprocess, best_epoch, dropped
    )


def _youden(items: Items, logits: np.ndarray, t: int) -> float | None:
    """Youden threshold of task column ``t`` on the items labelled for it (None with one class)."""
    labelled = ~np.isnan(items.labels[:, t])
    y = items.labels[labelled, t]
    if len(np.unique(y)) < 2:
        return None
    return choose_threshold(y, _sigmoid(logits[labelled, t]), rule="youden")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _fit(
    model: MultiTaskModel,
    groups: list[dict[str, Any]],
    train_set: ItemDataset,
    val_set: ItemDataset,
    config: TrainConfig,
    device: torch.device,
    pos_weight: torch.Tensor | None,
    on_epoch: Callable[[int, int, dict[str, Any]], None] | None,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], int]:
    """Train with early stopping; returns the history, the best epoch's state dict and that epoch.

    A model with batch norm drops a shuffled last batch of one item: batch statistics need two samples.
    """
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
        drop_last=batch_norm and len(train_set) > config.batch_size and len(train_set) % config.batch_size == 1,
    )
    steps = config.epochs * len(loader)
    optimizer = torch.optim.AdamW(groups)
    scheduler = warmup_cosine(optimizer, min(config.warmup_epochs * len(loader), steps), steps, config.min_lr_ratio)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # augmentations
    amp = autocast_dtype(config.amp, device)
    trainable = [p for p in model.parameters() if p.requires_grad]

    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, config.epochs + 1):
        start, total, seen = time.time(), 0.0, 0
        model.train()
        for batch in loader:
            batch = _to_device(batch, device)
            if config.augment is not None:
                batch = _augment_batch(batch, config.augment, generator)
            loss = masked_bce(_forward(model, batch, amp, device), batch["labels"], pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.clip_grad)
            optimizer.step()
            scheduler.step()
            n = batch["image"].shape[0]
            total, seen = total + float(loss.detach()) * n, seen + n
        train_loss = total / max(seen, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"epoch {epoch}: training loss is not finite; lower lr or use amp 'off'")
        record = {"epoch": epoch, "train_loss": train_loss}
        record |= _validation_record(
            predict_logits(model, val_set, config.batch_size, device, amp), val_set.items, pos_weight
        )
        record |= {"lr": optimizer.param_groups[-1]["lr"], "seconds": time.time() - start}
        auc = record["val_auc"]
        score = auc if config.monitor == "auc" and math.isfinite(auc) else -record["val_loss"]
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        record["best_epoch"] = best_epoch
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, record)
        if epoch - best_epoch >= config.patience:
            break
    return history, best_state, best_epoch


def predict(
    finetuned: TrainedModel,
    cache: Cache | str | Path,
    tables: Mapping[str, pd.DataFrame],
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Probabilities for the rows of each task's sample table (labels are not read).

    Returns:
        task -> ``[n_rows]`` float64 scores aligned with ``tables[task]``.
    """
    dev = pick_device(device)
    items = build_items(tables, finetuned.tasks, with_labels=False)
    if not len(items):
        return {task: np.zeros(0) for task in tables}
    cache = cache if isinstance(cache, Cache) else Cache(cache)
    dataset = ItemDataset(_cache_dataset(cache, items), items)
    model = finetuned.model.to(dev)
    logits = predict_logits(model, dataset, finetuned.config.batch_size, dev, autocast_dtype(finetuned.config.amp, dev))
    finetuned.model.cpu()
    return {task: _sigmoid(logits[items.rows[task], finetuned.tasks.index(task)]) for task in tables}


def fit_and_predict(
    fit: Callable[[list[str]], TrainedModel],
    cache: Cache | str | Path,
    train: Mapping[str, pd.DataFrame],
    test: Mapping[str, pd.DataFrame],
    device: str | torch.device | None = None,
) -> dict[str, tuple[np.ndarray, float]]:
    """Train with ``fit(test_patients)`` and score ``test``: one fold of cross-validation.

    Patients with a test row in any task are passed to ``fit`` to be left out of training (their images
    never train the model, even under another task's label). Thresholds and early stopping use the training
    data only.

    Args:
        fit: ``excluded patients -> trained model``, e.g. ``umbif.adapt.finetune.finetune`` with ``exclude_patients``.
        cache: the exam cache.
        train: task -> labelled training samples (only checked against ``test`` here).
        test: task -> test samples (a subset of ``train``'s tasks; ``y`` is not read).
        device: as in :func:`predict`.

    Returns:
        task -> ``(scores [len(test[task])], threshold)``; positive when ``score >= threshold``.
    """
    unknown = [t for t in test if t not in train]
    if unknown:
        raise ValueError(f"test tasks {unknown} have no training samples; pass them in train too")
    test_patients = sorted({str(p) for table in test.values() for p in table["patient_id"]})
    result = fit(test_patients)
    scores = predict(result, cache, test, device)
    return {task: (scores[task], result.thresholds[task]) for task in test}


# ----------------------------------------------------------------------------- records


def write_history(path: str | Path, history: Sequence[dict[str, Any]]) -> None:
    """Write the epoch records as JSON lines; NaN (an undefined AUC) becomes null: strict JSON has no NaN."""
    lines = "".join(json_text(_json_record(record), indent=None) + "\n" for record in history)
    write_text_atomic(path, lines)


def _json_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
