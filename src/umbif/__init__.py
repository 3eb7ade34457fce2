"""umbif: build and use a brain-MRI foundation model (UMBIF) from your own routine scans.

The data path is ``manifest -> preprocess -> cache -> dataset``; see ``umbif.data``.
"""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from umbif.models.umbif import UMBIFEncoder

__version__ = "0.1.0"

SEQUENCES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
"""The four canonical sequences, in the order every tensor and file of umbif uses."""


def load_encoder(path: str | PathLike[str], device: str = "cpu", strict: bool = True) -> UMBIFEncoder:
    """Load an exported UMBIF encoder (eval mode); see :func:`umbif.models.io.load_encoder`.

    ``import umbif`` stays light: torch and the model are imported on the first call.
    """
    from umbif.models.io import load_encoder as _load_encoder

    return _load_encoder(path, device=device, strict=strict)
