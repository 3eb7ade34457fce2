"""The pretrained encoder alone, out of a pretraining run (``umbif export``)."""

from __future__ import annotations

from pathlib import Path

from umbif.models.io import save_encoder
from umbif.models.umbif import UMBIFPretrainer
from umbif.train.checkpoint import load_checkpoint, read_state, resolve_checkpoint
from umbif.train.pretrain import PretrainConfig


def export_encoder(run_dir: str | Path, out_dir: str | Path) -> tuple[Path, int]:
    """Write the encoder of a run's latest checkpoint (or of one checkpoint folder) to ``out_dir``.

    Returns the folder (``encoder.safetensors`` + ``config.json``, for :func:`umbif.load_encoder`)
    and the step it comes from. A run folder gives its newest intact checkpoint (a damaged newest one is
    passed over with a warning); a ``latest`` pointer leading out of the run is refused
    (:func:`umbif.train.checkpoint.latest_checkpoint`).
    """
    folder = resolve_checkpoint(run_dir)
    state = read_state(folder)
    try:
        pretrain = PretrainConfig.model_validate(state["config"])  # sizes checked before the model is built
    except ValueError as err:
        raise ValueError(f"{folder / 'state.json'}: not a pretraining config ({err})") from None
    model = UMBIFPretrainer(pretrain.model)
    load_checkpoint(folder, model, restore_rng=False)
    # how it saw the exams travels with it: an encoder of tumour crops is read out on one (eval.methods.readout_of)
    seen = {"crop": pretrain.crop, "image_size": list(pretrain.model.image_size), "steps": int(state["step"])}
    return save_encoder(model.encoder, pretrain.model, out_dir, pretraining=seen), int(state["step"])
