"""Fine-tune the pretrained UMBIF encoder on the glioma tasks: one model, one head per task.

The method on top of the supervised loop (``umbif.train.supervised``): its config (heads, modes,
layer-wise learning-rate decay), the model (:class:`umbif.models.heads.MultiTaskModel` on the exported
encoder), the entry points — :func:`finetune_and_predict` and :class:`FinetuneMethod` for
cross-validation, :func:`finetune` + :func:`save_finetuned` for the final model (a classifier folder
for ``umbif predict``) — and :func:`training_samples`, the labelled cohort ``umbif finetune`` trains on.

The loss of an item is the BCE summed over the tasks it is labelled for, so a missing label contributes
no gradient. The shared encoder embeds both exams of a pair; the outcome head sees
``concat(baseline, followup, followup - baseline)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import model_validator

from umbif.adapt import classifier
from umbif.data.cache import Cache
from umbif.data.manifest import LABELS
from umbif.data.samples import PAIRED_TASKS, TASKS, check_task, labelled_samples
from umbif.models.heads import MultiTaskModel, TaskHead
from umbif.models.io import load_encoder
from umbif.models.umbif import UMBIFEncoder
from umbif.provenance import provenance, write_provenance
from umbif.train.supervised import (
    TrainConfig,
    TrainedModel,
    fit_and_predict,
    fit_multitask,
    param_groups,
    write_history,
)

HISTORY_FILE = "history.jsonl"
PROVENANCE_FILE = "provenance.json"


class FinetuneConfig(TrainConfig):
    """How the encoder and its task heads are fine-tuned; saved in the output's provenance.

    Example:
        >>> FinetuneConfig(head="mlp", mode="partial", trainable_blocks=2).epochs
        30
    """

    head: Literal["linear", "mlp", "attention"] = "linear"  # linear/MLP on CLS, attention pooling; only linear exports
    mode: Literal["full", "partial", "frozen"] = "full"  # train all | the last trainable_blocks blocks | heads only
    trainable_blocks: int = 1  # partial mode: the last k encoder blocks (and the final norm) train
    layer_decay: float = 0.75  # block i gets lr * layer_decay^(depth - i), the embeddings lr * layer_decay^(depth + 1)
    mlp_hidden: int = 256  # hidden width of the MLP head
    head_dropout: float = 0.1  # dropout of the MLP head
    pool_heads: int = 1  # heads of attention pooling (must divide the encoder width)

    @model_validator(mode="after")
    def _check_finetune(self) -> FinetuneConfig:
        if min(self.trainable_blocks, self.mlp_hidden) < 1:
            raise ValueError("trainable_blocks and mlp_hidden must be >= 1")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"need 0 < layer_decay <= 1, got {self.layer_decay}")
        return self


# ----------------------------------------------------------------------------- samples


def training_samples(
    table: pd.DataFrame, cache: Cache, tasks: Sequence[str] | None = None
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The labelled samples ``umbif finetune`` trains on: every labelled, cached sample of each task.

    Args:
        table: the manifest table.
        cache: its exam cache; exams not in it are left out.
        tasks: the tasks asked for, each of which must have samples; None: every task that has any.

    Returns:
        ``(task -> sample table, notes)``; the notes say which exams and tasks were left out.

    Raises:
        ValueError: a task asked for has no labelled, cached sample, or no task has any.
    """
    cached = cache.select(table["exam_id"])
    notes = [f"{len(table) - len(cached)} exams of the manifest are not in the cache and are left out"]
    notes = notes if len(cached) < len(table) else []
    train = {}
    for task in tasks or TASKS:
        samples = labelled_samples(table, task, set(cached))
        if samples.table.empty:
            if tasks:
                uncached = sum("not in the cache" in reason for reason in samples.skipped)
                hint = f" ({uncached} labelled exams are not cached: run `umbif preprocess`)" if uncached else ""
                raise ValueError(f"no labelled samples for task {task!r}{hint}; drop it from the tasks")
            notes.append(f"no labelled samples for {task}; it is left out")
            continue
        train[task] = samples.table
    if not train:
        raise ValueError("no labelled samples for any task among the cached exams; add labels or run preprocess")
    return train, notes


def check_saveable(config: FinetuneConfig, encoder_dir: str | Path) -> None:
    """Refuse, before any training, what :func:`save_finetuned` could not write as a classifier folder.

    Raises:
        ValueError: an MLP or attention head (a classifier folder holds linear heads on the CLS embedding).
        FileNotFoundError: ``encoder_dir`` holds no exported encoder.
    """
    from umbif.models.io import ENCODER_FILE

    if config.head != "linear":
        raise ValueError(
            f"head {config.head!r} cannot be saved: a classifier folder holds only linear heads on the CLS "
            "embedding; use --head linear (mlp and attention heads are for cross-validation through the library)"
        )
    if not (Path(encoder_dir) / ENCODER_FILE).is_file():
        raise FileNotFoundError(
            f"{encoder_dir}: no {ENCODER_FILE} here; export a pretrained encoder with `umbif export RUN --out DIR`"
        )


# ----------------------------------------------------------------------------- model


def build_model(encoder: UMBIFEncoder, tasks: Sequence[str], config: FinetuneConfig) -> MultiTaskModel:
    """The encoder with one ``config.head`` head per task (pair heads for the paired tasks), in ``mode``."""
    E = encoder.config.dim
    heads = {
        check_task(task): TaskHead(
            E, config.head, task in PAIRED_TASKS, config.mlp_hidden, config.head_dropout, config.pool_heads
        )
        for task in tasks
    }
    return MultiTaskModel(encoder, heads, config.mode, config.trainable_blocks)


def finetune(
    encoder_dir: str | Path,
    cache: Cache | str | Path,
    train: Mapping[str, pd.DataFrame],
    config: FinetuneConfig | None = None,
    device: str | torch.device | None = None,
    on_epoch: Callable[[int, int, dict[str, Any]], None] | None = None,
    exclude_patients: Sequence[str] = (),
) -> TrainedModel:
    """Fine-tune the encoder with one head per task of ``train`` (``fit_multitask`` with the exported
    encoder on the cache grid, ``config.head`` heads and layer-wise learning rates).

    Args:
        encoder_dir: an encoder exported by ``umbif export`` / :func:`umbif.models.io.save_encoder`.
        cache, train, device, on_epoch, exclude_patients: as in :func:`umbif.train.supervised.fit_multitask`.
        config: settings (default :class:`FinetuneConfig`).

    Returns:
        :class:`umbif.train.supervised.TrainedModel`.

    Raises:
        ValueError: an empty task, too few patients, exams not in the cache, an encoder that does not fit the grid.
        FileNotFoundError: no encoder or no cache.

    Example:
        >>> result = finetune("runs/encoder", "cache", {"idh": samples.table}, FinetuneConfig(epochs=20))
        >>> save_finetuned(result, "models/idh")
    """
    settings = config or FinetuneConfig()

    def build(tasks: tuple[str, ...], grid: tuple[int, int, int]) -> MultiTaskModel:
        encoder = load_encoder(encoder_dir, image_size=grid)  # fixed sin-cos positions: the weights fit any grid
        return build_model(encoder, tasks, settings)

    def groups(model: MultiTaskModel) -> list[dict[str, Any]]:
        return param_groups(model, settings.lr, settings.layer_decay, settings.weight_decay)

    return fit_multitask(build, groups, cache, train, settings, device, on_epoch, exclude_patients)


def finetune_and_predict(
    encoder_dir: str | Path,
    cache: Cache | str | Path,
    train: Mapping[str, pd.DataFrame],
    test: Mapping[str, pd.DataFrame],
    config: FinetuneConfig | None = None,
    device: str | torch.device | None = None,
) -> dict[str, tuple[np.ndarray, float]]:
    """Fine-tune on ``train`` and score ``test``: one fold of cross-validation
    (:func:`umbif.train.supervised.fit_and_predict`).

    Args:
        encoder_dir, cache, config, device: as in :func:`finetune`.
        train: task -> labelled training samples.
        test: task -> test samples (a subset of ``train``'s tasks; ``y`` is not read).

    Returns:
        task -> ``(scores [len(test[task])], threshold)``; positive when ``score >= threshold``.

    Example:
        >>> out = finetune_and_predict("encoder", "cache", {"idh": train_idh}, {"idh": test_idh})
        >>> scores, threshold = out["idh"]
    """

    def fit(excluded: list[str]) -> TrainedModel:
        return finetune(encoder_dir, cache, train, config, device, exclude_patients=excluded)

    return fit_and_predict(fit, cache, train, test, device)


# ----------------------------------------------------------------------------- export


def save_finetuned(finetuned: TrainedModel, out_dir: str | Path) -> Path:
    """Write a classifier folder (``umbif-classifier`` v1, method ``"finetune"``) for ``umbif predict``.

    Through :func:`umbif.adapt.classifier.save_classifier` (the probe's writer): the fine-tuned encoder,
    the linear heads (``weight``, ``bias``, ``mean`` = 0, ``scale`` = 1: the head reads the raw CLS
    embedding) and ``classifier.json``; then ``history.jsonl`` (one line per epoch) and ``provenance.json``.

    Raises:
        ValueError: the heads are MLP or attention heads, or the model is not a UMBIF encoder (a CNN
            baseline); only linear heads on the UMBIF CLS embedding fit the format (nothing is written then).

    Example:
        >>> save_finetuned(finetune("encoder", "cache", tables), "models/glioma")
    """
    out_dir = Path(out_dir)
    model_config = finetuned.model_config
    if model_config is None:
        raise ValueError("only a fine-tuned UMBIF encoder can be saved as a classifier folder, not another backbone")
    heads = {}
    for task, head in finetuned.model.heads.items():
        weight, bias = head.linear_parameters()  # raises for MLP/attention heads, before anything is written
        positive, negative = LABELS[task]
        heads[task] = classifier.SavedTaskHead(
            head=classifier.SavedLinearHead(
                weight.numpy(), float(bias), np.zeros(weight.numel()), np.ones(weight.numel())
            ),
            inputs="pair" if head.pair else "exam",
            threshold=finetuned.thresholds[task],
            positive=positive,
            negative=negative,
            n_train=finetuned.n_train[task],
            threshold_rule=finetuned.threshold_rules[task],
        )
    config = finetuned.config
    record = provenance(config.to_dict(), config.seed)
    classifier.save_classifier(
        out_dir, finetuned.model.encoder, model_config, heads, finetuned.preprocess, model_config.image_size,
        "finetune", record,
    )  # fmt: skip
    write_history(out_dir / HISTORY_FILE, finetuned.history)
    write_provenance(out_dir / PROVENANCE_FILE, config.to_dict(), config.seed)
    return out_dir


@dataclass
class FinetuneMethod:
    """Fine-tuning of an exported encoder with task heads, one model per fold (a method of
    ``umbif.eval.evaluate.run_method``)."""

    encoder_dir: Path
    cache: Cache
    config: FinetuneConfig
    name: str = "umbif-finetune"
    description: str = "UMBIF encoder, fine-tuned with multi-task heads (layer-wise LR decay, early stopping)"

    def fit_predict(
        self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]
    ) -> dict[str, tuple[np.ndarray, float]]:
        return finetune_and_predict(self.encoder_dir, self.cache, train, test, self.config)
