"""Reading NIfTI volumes with the header checks umbif relies on, and writing them atomically.

nibabel reads the file (its sform/qform rules are the field's reference); every failure becomes an
:class:`ImageError` whose message names the file, what is wrong and what to do.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from umbif.config import PreprocessConfig
from umbif.utils import atomic_write


def write_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray, compresslevel: int = 6) -> None:
    """Write gzipped NIfTI atomically with sform and qform set to ``affine`` (scanner space, mm) and no
    text in the header; ``mtime`` 0 so the same data gives the same bytes."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_write(path) as handle:
        handle.write(gzip.compress(image.to_bytes(), compresslevel=compresslevel, mtime=0))


class ImageError(ValueError):
    """An image file that umbif refuses; the message says which file and why."""


@dataclass(frozen=True)
class Volume:
    """A 3D image and the affine that maps voxel indices (i, j, k) to RAS world millimetres."""

    data: np.ndarray  # [I, J, K]: the stored integer type when unscaled (no NaN possible), else float32
    affine: np.ndarray  # [4, 4] float64
    path: Path

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def check_affine(affine: np.ndarray, path: Path, config: PreprocessConfig) -> None:
    """Raise :class:`ImageError` for an affine umbif cannot trust (non-finite, singular, odd spacing)."""
    if not np.all(np.isfinite(affine)):
        raise ImageError(f"{path}: the affine has non-finite values; fix the NIfTI header (sform/qform)")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ImageError(f"{path}: the affine is singular (a zero voxel size or repeated axis); fix the header")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if spacing.min() < config.min_spacing_mm or spacing.max() > config.max_spacing_mm:
        raise ImageError(
            f"{path}: voxel size {np.round(spacing, 4).tolist()} mm is outside "
            f"[{config.min_spacing_mm}, {config.max_spacing_mm}] mm; the header's units may be wrong "
            "(change min_spacing_mm/max_spacing_mm if the file is right)"
        )


def read_nifti(path: str | Path, config: PreprocessConfig | None = None) -> Volume:
    """Read one 3D NIfTI (.nii or .nii.gz) as float32, after checking its header.

    A 4D file with a single volume is accepted as 3D. Non-finite voxels are refused or zeroed
    according to ``config.nonfinite``.

    Raises:
        ImageError: unreadable or truncated file, not one 3D volume, too many voxels, bad affine,
            non-numeric data, or non-finite voxels under ``nonfinite="error"``.
    """
    config = config or PreprocessConfig()
    path = Path(path)
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except Exception as err:  # nibabel raises many types for a bad header
        raise ImageError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageError(f"{path}: is {type(image).__name__}, umbif reads NIfTI-1/2 (.nii, .nii.gz)")
    shape = tuple(int(n) for n in image.shape)
    spatial = shape[:3]
    if len(shape) < 3 or any(n != 1 for n in shape[3:]) or min(spatial) < 2:
        raise ImageError(f"{path}: has shape {shape}; umbif needs one 3D volume per file (split 4D series first)")
    if int(np.prod(spatial)) > config.max_voxels:
        raise ImageError(
            f"{path}: {'x'.join(map(str, spatial))} voxels exceed the limit of {config.max_voxels}; "
            "a corrupt header, or raise max_voxels"
        )
    if not np.issubdtype(image.get_data_dtype(), np.number) or np.issubdtype(
        image.get_data_dtype(), np.complexfloating
    ):
        raise ImageError(f"{path}: voxel type {image.get_data_dtype()} is not a real number (RGB/complex?)")
    affine = np.asarray(image.affine, dtype=np.float64)
    check_affine(affine, path, config)
    try:
        if _unscaled_integers(image):
            # kept as stored (e.g. int16): half the memory and copies of float32, and no NaN to check
            return Volume(data=np.asarray(image.dataobj).reshape(spatial), affine=affine, path=path)
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(spatial)
    except (EOFError, OSError, zlib.error, ValueError) as err:
        raise ImageError(f"{path}: the voxel data cannot be read, the file is truncated or corrupt ({err})") from err
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - finite.sum())
        if config.nonfinite == "error":
            raise ImageError(
                f"{path}: {bad} voxels are NaN or infinite; fix the file or preprocess with nonfinite='zero'"
            )
        data = np.where(finite, data, np.float32(0))
    return Volume(data=data, affine=affine, path=path)


def _unscaled_integers(image: nib.Nifti1Image) -> bool:
    """True when the file stores integers with no scaling (slope 1 or unset, intercept 0 or unset)."""
    slope, inter = image.dataobj.slope, image.dataobj.inter
    return (
        np.issubdtype(image.get_data_dtype(), np.integer)
        and (slope == 1 or not np.isfinite(slope) or slope == 0)
        and (inter == 0 or not np.isfinite(inter))
    )
