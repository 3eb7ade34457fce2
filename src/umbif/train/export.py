"""The pretrained encoder alone, out of a pretraining run (``umbif export``)."""

from __future__ import annotations

import json
from pathlib import Path

from umbif.models.io import save_encoder
from umbif.models.umbif import UMBIFPretrainer
from umbif.train.checkpoint import load_checkpoint, resolve_checkpoint
from umbif.train.pretrain import PretrainConfig


def export_encoder(run_dir: str | Path, out_dir: str | Path) -> tuple[Path, int]:
    """Write the encoder of a run's latest checkpoint (or of one checkpoint folder) to ``out_dir``.

    Returns the folder (``encoder.safetensors`` + ``config.json``, for :func:`umbif.load_encoder`)
    and the step it comes from.
    """
    folder = resolve_checkpoint(run_dir)
    state = json.loads((folder / "state.json").read_text())
    config = PretrainConfig.model_validate(state["config"]).model
    model = UMBIFPretrainer(config)
    load_checkpoint(folder, model, restore_rng=False)
    return save_encoder(model.encoder, config, out_dir), int(state["step"])
