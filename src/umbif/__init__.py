"""umbif: build and use a brain-MRI foundation model (UMBIF) from your own routine scans.

The data path is ``manifest -> preprocess -> cache -> dataset``; see ``umbif.data``.
"""

__version__ = "0.1.0"

SEQUENCES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
"""The four canonical sequences, in the order every tensor and file of umbif uses."""
