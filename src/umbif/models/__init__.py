"""The UMBIF model (``umbif.models.umbif``, built from the transformer blocks of ``umbif.models.blocks``), its
pretraining losses (``umbif.models.objectives``) and encoder export/load (``umbif.models.io``)."""

from umbif.models.io import load_encoder, load_state_tolerant, save_encoder
from umbif.models.objectives import info_nce, reconstruction_loss
from umbif.models.umbif import (
    PRESETS,
    ModelConfig,
    UMBIFDecoder,
    UMBIFEncoder,
    UMBIFPretrainer,
    random_masking,
)

__all__ = [
    "PRESETS",
    "ModelConfig",
    "UMBIFDecoder",
    "UMBIFEncoder",
    "UMBIFPretrainer",
    "info_nce",
    "load_encoder",
    "load_state_tolerant",
    "random_masking",
    "reconstruction_loss",
    "save_encoder",
]
