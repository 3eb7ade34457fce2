"""SSL-Cerebral baseline: the UMBIF architecture and pretraining recipe, trained only on tumour-area crops.

It is ``umbif.train.pretrain.pretrain`` with ``crop="tumour"``: every view is a box of the model's input
size centred on the exam's segmented tumour (its bounding-box centre, moved by up to ``crop_jitter``
voxels per axis), and exams without a segmented tumour are left out (counted in the run's
``config.json`` as ``skipped_without_tumour``). The exported encoder loads like any UMBIF encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from umbif.data.cache import Cache
from umbif.train.export import export_encoder
from umbif.train.pretrain import PretrainConfig, pretrain

log = logging.getLogger(__name__)
RUN_DIR, ENCODER_DIR = "run", "encoder"  # inside out_dir


def cerebral_config(config: PretrainConfig) -> PretrainConfig:
    """``config`` with tumour-centred crops (everything else, ``crop_jitter`` included, as given)."""
    return PretrainConfig.model_validate({**config.model_dump(mode="json"), "crop": "tumour"})


def pretrain_cerebral(
    manifest_table: pd.DataFrame,
    cache: Cache | str | Path,
    out_dir: str | Path,
    config: PretrainConfig,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> Path:
    """Pretrain UMBIF on tumour-centred crops of the manifest's cached exams and export the encoder.

    Rerunning continues a stopped run from its last checkpoint (exactly), and a finished one is only
    exported again.

    Args:
        manifest_table: the manifest's table (``exam_id`` column); its exams that are in the cache and
            have a non-empty tumour segmentation are trained on.
        cache: a :class:`umbif.data.cache.Cache` or the folder ``umbif preprocess`` wrote (segmentations in
            the masks, ``has_seg`` in the index).
        out_dir: ``run/`` (the pretraining run folder) and ``encoder/`` (the export) go here.
        config: the pretraining recipe; ``crop`` is set to ``"tumour"``.
        on_step: called after every optimiser step with (step, total, losses).

    Returns:
        the encoder folder (``encoder.safetensors`` + ``config.json``), for ``umbif.load_encoder``.

    Raises:
        ValueError: no exam of the manifest is cached, fewer exams with a tumour than one batch, or a
            run in ``out_dir`` made with other settings.

    Example:
        >>> encoder_dir = pretrain_cerebral(manifest.table, "cache/", "runs/ssl_cerebral", PretrainConfig())
    """
    cache, out_dir = cache if isinstance(cache, Cache) else Cache(cache), Path(out_dir)
    if "exam_id" not in manifest_table.columns:
        raise ValueError("the manifest table has no exam_id column; pass Manifest.read(path).table")
    exam_ids = cache.select(manifest_table["exam_id"].astype(str))
    if not exam_ids:
        raise ValueError(f"none of the manifest's {len(manifest_table)} exams is in the cache {cache.path}")
    config = cerebral_config(config)
    run_dir = out_dir / RUN_DIR
    result = pretrain(cache, run_dir, config, exam_ids, resume="auto", on_step=on_step)
    log.info("SSL-Cerebral: %d exams with a tumour, %d skipped", result["exams"], result["skipped_without_tumour"])
    return export_encoder(run_dir, out_dir / ENCODER_DIR)[0]
