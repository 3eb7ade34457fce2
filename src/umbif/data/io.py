"""Reading NIfTI volumes with the header checks umbif relies on, and writing them atomically.

nibabel reads the file (its sform/qform rules are the field's reference); every failure becomes an
:class:`ImageError` whose message names the file, what is wrong and what to do. Beyond nibabel's own
checks, a ``.nii.gz`` is decompressed to its end so its CRC is verified (nibabel reads only the bytes
it needs, so a damaged file would otherwise give damaged voxels), and a header with neither an sform
nor a qform is refused (nibabel's fallback affine can mirror or rescale the image).
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
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


GZIP_SLACK = 64 << 20  # bytes a .nii.gz may hold after the voxel data before it counts as corrupt (a gzip bomb)


def check_regular_file(path: Path, what: str = "image") -> None:
    """Raise :class:`ImageError` unless ``path`` is a regular file (never open a FIFO: it would block)."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ImageError(f"{path}: file not found") from None
        reason = "a symbolic link loop" if err.errno == errno.ELOOP else os.strerror(err.errno or 0)
        raise ImageError(f"{path}: cannot be opened ({reason})") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a folder, not an {what} file; give the NIfTI file inside it")
    if not stat.S_ISREG(mode):
        raise ImageError(f"{path}: is not a regular file (a FIFO, socket or device); give a NIfTI {what} file")


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
        ImageError: not a regular file, unreadable, truncated or corrupt (gzip CRC) file, no sform or
            qform, not one 3D volume, too many voxels, bad affine, non-numeric data, or non-finite
            voxels under ``nonfinite="error"``.
    """
    config = config or PreprocessConfig()
    path = Path(path)
    check_regular_file(path)
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
    if int(image.header["sform_code"]) == 0 and int(image.header["qform_code"]) == 0:
        raise ImageError(
            f"{path}: the header has neither an sform nor a qform (both codes are 0), so its orientation is "
            "unknown and nibabel would guess one that can mirror or rescale the image; convert it again "
            "(e.g. with dcm2niix) or set the sform"
        )
    affine = np.asarray(image.affine, dtype=np.float64)
    check_affine(affine, path, config)
    if path.name.lower().endswith(".gz"):
        image = _checked_gzip(image, path)
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


def _checked_gzip(image: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    """The image again, from the file decompressed once to its end, so gzip's CRC and length are checked.

    Reading stops at the header's size plus :data:`GZIP_SLACK`: a file that inflates beyond it is refused.
    """
    needed = int(image.dataobj.offset) + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read(needed)
            extra = 0
            while chunk := stream.read(1 << 20):  # the rest, to reach the CRC at the end
                extra += len(chunk)
                if extra > GZIP_SLACK:
                    raise ImageError(f"{path}: holds far more data than its header describes; the file is corrupt")
    except (EOFError, OSError, zlib.error) as err:
        raise ImageError(
            f"{path}: the compressed data is truncated or corrupt ({err}); copy the file again from its source"
        ) from None
    if len(raw) < needed:
        raise ImageError(f"{path}: the voxel data is truncated or corrupt ({len(raw)} of {needed} bytes)")
    return type(image).from_bytes(raw)


def _unscaled_integers(image: nib.Nifti1Image) -> bool:
    """True when the file stores integers with no scaling (slope 1 or unset, intercept 0 or unset)."""
    slope, inter = image.dataobj.slope, image.dataobj.inter
    return (
        np.issubdtype(image.get_data_dtype(), np.integer)
        and (slope == 1 or not np.isfinite(slope) or slope == 0)
        and (inter == 0 or not np.isfinite(inter))
    )
