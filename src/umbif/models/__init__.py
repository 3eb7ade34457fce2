"""The UMBIF model (``umbif.models.umbif``, built from the transformer blocks of ``umbif.models.blocks``) and
encoder export/load (``umbif.models.io``)."""

from umbif.models.io import load_encoder, load_state_tolerant, save_encoder
from umbif.models.umbif import (
    PRESETS,
    ModelConfig,
    UMBIFDecoder,
    UMBIFEncoder,
    UMBIFPretrainer,
    info_nce,
    random_masking,
    reconstruction_loss,
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
