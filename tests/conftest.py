"""Shared test helpers: tiny NIfTI exams built on the fly, and the real UPENN-GBM sample."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from umbif import SEQUENCES

# the real exam; UMBIF_SAMPLE_DIR points elsewhere when the checkout is not next to ../shared
SHARED_SAMPLE = Path(
    os.environ.get("UMBIF_SAMPLE_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "upenn-gbm-sample")
)

# RAS 2 mm, LPS 1 mm, anisotropic (thick slices) and oblique (15 degrees about z) affines
AFFINES: dict[str, np.ndarray] = {
    "ras": np.diag([2.0, 2.0, 2.0, 1.0]),
    "lps": np.diag([-1.5, -1.5, 1.5, 1.0]),
    "anisotropic": np.diag([1.0, 1.0, 4.0, 1.0]),
}
_angle = np.deg2rad(15.0)
_rot = np.array([[np.cos(_angle), -np.sin(_angle), 0.0], [np.sin(_angle), np.cos(_angle), 0.0], [0.0, 0.0, 1.0]])
AFFINES["oblique"] = np.eye(4)
AFFINES["oblique"][:3, :3] = _rot @ np.diag([1.5, 1.5, 1.5])
for _affine in AFFINES.values():
    _affine[:3, 3] = -_affine[:3, :3] @ np.array([20.0, 20.0, 20.0])  # centre voxel (20,20,20) at the origin


def brain_phantom(shape: tuple[int, int, int] = (40, 40, 40), seed: int = 0) -> np.ndarray:
    """An ellipsoid 'brain' with two tissue intensities and mild noise, zero background (float32)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.7, 0.8, 0.6])[:, None, None, None]) ** 2).sum(0))
    image = np.where(radius < 1.0, 300.0, 0.0) + np.where(radius < 0.5, 200.0, 0.0)
    image += (radius < 1.0) * rng.normal(0, 10, shape)
    return image.astype(np.float32)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` with ``affine`` as NIfTI (sform and qform set)."""
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


@pytest.fixture
def make_exam(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_exam("exam1", sequences=("t1", "flair"), affine="lps")`` writes one exam folder
    ``tmp_path/data/exam1/exam1_<seq>.nii.gz`` and returns it. Sequence k has intensity scaled by k+1
    so sequences can be told apart after preprocessing."""

    def _make(
        name: str = "exam1",
        sequences: tuple[str, ...] = SEQUENCES,
        affine: str | np.ndarray = "ras",
        shape: tuple[int, int, int] = (40, 40, 40),
        seed: int = 0,
    ) -> Path:
        folder = tmp_path / "data" / name
        matrix = AFFINES[affine] if isinstance(affine, str) else affine
        base = brain_phantom(shape, seed)
        for sequence in sequences:
            scale = SEQUENCES.index(sequence) + 1
            save_nifti(folder / f"{name}_{sequence}.nii.gz", base * scale, matrix)
        return folder

    return _make


@pytest.fixture(scope="session")
def upenn_sample() -> Path:
    """The real UPENN-GBM exam from ../shared/data; skipped when this checkout has no shared folder."""
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"real exam not found at {SHARED_SAMPLE} (the shared data folder is not part of a plain clone)")
    return SHARED_SAMPLE
