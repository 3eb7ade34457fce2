"""Reading NIfTI: good files come back with their data and affine, bad ones raise ImageError naming the file."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import AFFINES, brain_phantom, save_nifti
from umbif.config import PreprocessConfig
from umbif.data.io import ImageError, check_affine, read_nifti


def _save_sform_only(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI whose only orientation is the raw sform: nibabel cannot store a NaN or singular affine as
    a qform, and a broken sform is what a corrupt header looks like."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_sform(affine, code=1)
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(data, None, header=header), path)
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("affine", ["ras", "lps", "oblique"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_reads_data_and_affine(tmp_path: Path, suffix: str, affine: str, dtype: type) -> None:
    data = brain_phantom((10, 12, 8)).astype(dtype)
    path = save_nifti(tmp_path / f"t1{suffix}", data, AFFINES[affine])
    volume = read_nifti(path)
    assert volume.path == path
    assert volume.data.dtype == dtype  # float32 stays float32; unscaled integers are kept as stored
    assert volume.data.shape == (10, 12, 8)
    np.testing.assert_array_equal(volume.data, data.astype(np.float32))
    np.testing.assert_allclose(volume.affine, AFFINES[affine], atol=1e-5)
    np.testing.assert_allclose(volume.spacing, np.linalg.norm(AFFINES[affine][:3, :3], axis=0), rtol=1e-6)


def test_scaled_integers_are_read_as_float(tmp_path: Path) -> None:
    data = brain_phantom((8, 8, 8)) / 7.0
    image = nib.Nifti1Image(data, AFFINES["ras"])
    image.set_data_dtype(np.int16)  # nibabel stores a slope so the floats survive as int16
    nib.save(image, tmp_path / "t1.nii.gz")
    volume = read_nifti(tmp_path / "t1.nii.gz")
    assert volume.data.dtype == np.float32
    np.testing.assert_allclose(volume.data, data, atol=1e-3 * data.max())


def test_single_volume_4d_is_read_as_3d(tmp_path: Path) -> None:
    data = brain_phantom((8, 8, 8))
    path = save_nifti(tmp_path / "t1.nii.gz", data[..., None], AFFINES["ras"])
    volume = read_nifti(path)
    np.testing.assert_array_equal(volume.data, data)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 8, 3), (8, 8, 1), (8, 8, 8, 1, 2)])
def test_refuses_anything_but_one_3d_volume(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = save_nifti(tmp_path / "bad.nii.gz", np.ones(shape, np.float32), AFFINES["ras"])
    with pytest.raises(ImageError, match=rf"{re.escape(str(path))}: has shape \(.*one 3D volume per file"):
        read_nifti(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_truncated_file(tmp_path: Path, suffix: str, dtype: type) -> None:
    path = save_nifti(tmp_path / f"t1{suffix}", brain_phantom((16, 16, 16)).astype(dtype), AFFINES["ras"])
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))}: .*truncated or corrupt"):
        read_nifti(path)


@pytest.mark.parametrize("name", ["garbage.nii.gz", "garbage.nii", "garbage.mha"])
def test_not_a_nifti_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an image\n" * 40)
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))}: not a readable NIfTI file"):
        read_nifti(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        read_nifti(tmp_path / "none.nii.gz")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_voxels(tmp_path: Path, bad: float) -> None:
    data = brain_phantom((8, 8, 8))
    data[1, 2, 3] = bad
    data[4, 4, 4] = bad
    path = save_nifti(tmp_path / "t1.nii.gz", data, AFFINES["ras"])
    with pytest.raises(ImageError, match=rf"{re.escape(str(path))}: 2 voxels are NaN or infinite"):
        read_nifti(path)
    volume = read_nifti(path, PreprocessConfig(nonfinite="zero"))
    assert volume.data[1, 2, 3] == 0 and volume.data[4, 4, 4] == 0
    mask = np.isfinite(data)
    np.testing.assert_array_equal(volume.data[mask], data[mask])


@pytest.mark.parametrize(
    ("affine", "message"),
    [
        (np.diag([np.nan, 1.0, 1.0, 1.0]), "non-finite"),
        (np.diag([1.0, np.inf, 1.0, 1.0]), "non-finite"),
        (np.diag([0.0, 1.0, 1.0, 1.0]), "singular"),
        (np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]), "singular"),
        (np.diag([0.05, 1.0, 1.0, 1.0]), r"voxel size \[0.05, 1.0, 1.0\] mm is outside \[0.1, 12.0\]"),
        (np.diag([1.0, 1.0, 15.0, 1.0]), r"voxel size \[1.0, 1.0, 15.0\] mm is outside"),
    ],
)
def test_bad_affine_in_file(tmp_path: Path, affine: np.ndarray, message: str) -> None:
    path = _save_sform_only(tmp_path / "t1.nii.gz", np.ones((8, 8, 8), np.float32), affine)
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))}: .*{message}"):
        read_nifti(path)


@pytest.mark.parametrize(
    ("affine", "config", "ok"),
    [
        (AFFINES["oblique"], PreprocessConfig(), True),
        (AFFINES["anisotropic"], PreprocessConfig(), True),
        (np.diag([1.0, 1.0, 15.0, 1.0]), PreprocessConfig(), False),
        (np.diag([1.0, 1.0, 15.0, 1.0]), PreprocessConfig(max_spacing_mm=20.0), True),
        (np.diag([0.05, 0.05, 0.05, 1.0]), PreprocessConfig(), False),
        (np.diag([0.05, 0.05, 0.05, 1.0]), PreprocessConfig(min_spacing_mm=0.01), True),
        (np.diag([-1.0, -1.0, 1.0, 1.0]), PreprocessConfig(), True),  # flipped axes are fine
    ],
)
def test_check_affine_spacing_limits(affine: np.ndarray, config: PreprocessConfig, ok: bool) -> None:
    if ok:
        check_affine(affine, Path("t1.nii.gz"), config)
    else:
        with pytest.raises(ImageError, match=r"^t1.nii.gz: voxel size .*change min_spacing_mm/max_spacing_mm"):
            check_affine(affine, Path("t1.nii.gz"), config)


@pytest.mark.parametrize(("max_voxels", "ok"), [(8 * 8 * 8, True), (8 * 8 * 8 - 1, False)])
def test_voxel_limit(tmp_path: Path, max_voxels: int, ok: bool) -> None:
    path = save_nifti(tmp_path / "t1.nii.gz", np.ones((8, 8, 8), np.float32), AFFINES["ras"])
    config = PreprocessConfig(max_voxels=max_voxels)
    if ok:
        assert read_nifti(path, config).data.shape == (8, 8, 8)
    else:
        with pytest.raises(ImageError, match=rf"{re.escape(str(path))}: 8x8x8 voxels exceed the limit of {max_voxels}"):
            read_nifti(path, config)


@pytest.mark.parametrize(
    "data",
    [
        np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]),
        np.ones((4, 4, 4), np.complex64),
    ],
    ids=["rgb", "complex"],
)
def test_non_real_voxel_type(tmp_path: Path, data: np.ndarray) -> None:
    path = save_nifti(tmp_path / "t1.nii.gz", data, AFFINES["ras"])
    with pytest.raises(ImageError, match=rf"{re.escape(str(path))}: voxel type .* is not a real number"):
        read_nifti(path)
