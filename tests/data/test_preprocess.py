"""Preprocessing one exam: world positions survive resampling, RAS grid, z-scoring in the brain mask, missing
sequences, given masks, centring crop, field-of-view checks, automatic mask, crop/pad, label resampling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import AFFINES, brain_phantom, save_nifti
from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data.io import ImageError
from umbif.data.manifest import Exam, Manifest
from umbif.data.preprocess import auto_brain_mask, crop_or_pad, preprocess_exam

SMALL = PreprocessConfig(shape=(24, 24, 24), spacing=(2.0, 2.0, 2.0))
MARKER = (24, 17, 22)  # input voxel of the marker blob: off-centre on every axis, so a flipped axis shows


def _exam(root: Path, **paths: str) -> Exam:
    """The one exam of a manifest with ``paths`` (column -> path relative to ``root``)."""
    return Manifest(pd.DataFrame([{"exam_id": "e1", "patient_id": "p1", "site": "s", **paths}]), root=root).exam(0)


def _sequences(name: str, sequences: tuple[str, ...]) -> dict[str, str]:
    """Manifest cells for the files ``make_exam(name, sequences)`` writes."""
    return {s: f"data/{name}/{name}_{s}.nii.gz" for s in sequences}


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(index, dtype=np.float64) + affine[:3, 3]


def _ellipsoid(shape: tuple[int, int, int]) -> np.ndarray:
    """The true brain of ``brain_phantom(shape)``."""
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    return np.sqrt(((grid / np.array([0.7, 0.8, 0.6])[:, None, None, None]) ** 2).sum(0)) < 1.0


def _nearest_lookup(volume: np.ndarray, in_affine: np.ndarray, out_affine: np.ndarray, shape: tuple) -> np.ndarray:
    """``volume`` sampled at the nearest input voxel of every output voxel centre (0 outside)."""
    out_index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    to_input = np.linalg.inv(in_affine) @ out_affine
    index = np.rint(out_index @ to_input[:3, :3].T + to_input[:3, 3]).astype(int)
    inside = np.all((index >= 0) & (index < np.array(volume.shape)), axis=1)
    values = np.zeros(len(index), dtype=volume.dtype)
    values[inside] = volume[tuple(index[inside].T)]
    return values.reshape(shape)


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (2.0, 2.5, 3.0)])
@pytest.mark.parametrize("affine", list(AFFINES))
def test_marker_keeps_its_world_position_on_a_ras_grid(
    tmp_path: Path, affine: str, spacing: tuple[float, float, float]
) -> None:
    data = brain_phantom((40, 40, 40))
    i, j, k = MARKER
    data[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = 3000.0
    save_nifti(tmp_path / "t1.nii.gz", data, AFFINES[affine])
    config = PreprocessConfig(shape=(24, 24, 24), spacing=spacing)

    result = preprocess_exam(_exam(tmp_path, t1="t1.nii.gz"), config)

    assert result.image.shape == (1, *config.shape)
    assert result.masks.shape == (2, *config.shape)
    np.testing.assert_allclose(result.affine[:3, :3], np.diag(spacing), atol=1e-9)  # RAS: positive, no rotation
    np.testing.assert_array_equal(result.affine[3], [0, 0, 0, 1])
    channel = result.image[0]
    found = np.argwhere(channel > channel.max() / 2).mean(0)  # blob centre in output voxels
    distance = np.linalg.norm(_world(result.affine, found) - _world(AFFINES[affine], MARKER))
    assert distance <= max(spacing), f"marker moved {distance:.2f} mm"


@pytest.mark.parametrize("zero_outside", [True, False])
def test_zscore_inside_the_brain_mask(make_exam: Callable[..., Path], tmp_path: Path, zero_outside: bool) -> None:
    make_exam("e1", shape=(24, 24, 24))  # 2 mm RAS: the 24^3 output grid is the input grid, nothing clipped
    config = SMALL.model_copy(update={"zero_outside_mask": zero_outside})

    result = preprocess_exam(_exam(tmp_path, **_sequences("e1", SEQUENCES)), config)

    assert result.sequences == SEQUENCES
    assert result.brain_clipped == 0
    brain = result.masks[0].astype(bool)
    assert 0 < brain.sum() < brain.size
    for channel, name in zip(result.image, SEQUENCES, strict=True):
        assert abs(channel[brain].mean()) < 1e-3
        assert channel[brain].std() == pytest.approx(1.0, rel=1e-3)
        stats = result.stats[name]
        background = 0.0 if zero_outside else -stats["mean"] / stats["std"]  # input background is 0
        np.testing.assert_allclose(channel[~brain], background, atol=1e-4)
    # make_exam scales sequence k by k+1: z-scoring removes the scale, the input stats keep it
    np.testing.assert_allclose(result.image, np.broadcast_to(result.image[:1], result.image.shape), atol=1e-4)
    means = np.array([result.stats[s]["mean"] for s in SEQUENCES])
    np.testing.assert_allclose(means / means[0], [1, 2, 3, 4], rtol=1e-5)


@pytest.mark.parametrize("present", [("t2", "flair"), ("t1c",), ("flair", "t1")])
def test_missing_sequences_leave_the_present_ones_in_canonical_order(
    make_exam: Callable[..., Path], tmp_path: Path, present: tuple[str, ...]
) -> None:
    make_exam("e1", sequences=present, shape=(24, 24, 24))

    result = preprocess_exam(_exam(tmp_path, **_sequences("e1", present)), SMALL)

    canonical = tuple(s for s in SEQUENCES if s in present)
    assert result.sequences == canonical
    assert result.image.shape == (len(canonical), *SMALL.shape)
    assert set(result.stats) == set(canonical)
    # the input mean of sequence k is (k+1) times the base mean: each channel holds its own sequence
    base = result.stats[canonical[0]]["mean"] / (SEQUENCES.index(canonical[0]) + 1)
    for name in canonical:
        assert result.stats[name]["mean"] == pytest.approx(base * (SEQUENCES.index(name) + 1), rel=1e-5)


def test_given_brain_mask_is_used(make_exam: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_exam("e1", sequences=("t1",), shape=(24, 24, 24))
    index = np.stack(np.meshgrid(*(np.arange(24),) * 3, indexing="ij"))
    given = (np.linalg.norm(index - np.array([14, 11, 12])[:, None, None, None], axis=0) <= 4).astype(np.uint8)
    save_nifti(folder / "mask.nii.gz", given, AFFINES["ras"])  # a ball well inside the phantom, off-centre

    result = preprocess_exam(_exam(tmp_path, t1="data/e1/e1_t1.nii.gz", brain_mask="data/e1/mask.nii.gz"), SMALL)

    assert result.mask_source == "manifest"
    expected = _nearest_lookup(given, AFFINES["ras"], result.affine, SMALL.shape)
    assert expected.sum() == given.sum()  # the whole ball is inside the output
    np.testing.assert_array_equal(result.masks[0], expected)
    brain = expected.astype(bool)
    channel = result.image[0]
    assert abs(channel[brain].mean()) < 1e-3
    assert channel[brain].std() == pytest.approx(1.0, rel=1e-3)
    assert not channel[~brain].any()
    phantom = brain_phantom((24, 24, 24))  # what make_exam wrote for t1 (scale 1)
    assert result.stats["t1"]["mean"] == pytest.approx(phantom[given.astype(bool)].mean(), rel=1e-4)


@pytest.mark.parametrize("corner", [(2, 2, 2), (26, 4, 20), (10, 27, 1)])
def test_crop_centres_an_off_centre_brain(tmp_path: Path, corner: tuple[int, int, int]) -> None:
    data = np.zeros((48, 48, 48), dtype=np.float32)
    box = tuple(slice(c, c + 20) for c in corner)
    data[box] = brain_phantom((20, 20, 20))
    save_nifti(tmp_path / "t1.nii.gz", data, AFFINES["ras"])

    result = preprocess_exam(_exam(tmp_path, t1="t1.nii.gz"), SMALL)

    assert result.mask_source == "auto"
    assert result.brain_clipped == 0
    centroid = np.argwhere(result.masks[0]).mean(0)
    np.testing.assert_allclose(centroid, (np.array(SMALL.shape) - 1) / 2, atol=1.0)
    phantom_centre = np.array(corner) + 9.5
    distance = np.linalg.norm(_world(result.affine, centroid) - _world(AFFINES["ras"], phantom_centre))
    assert distance <= max(SMALL.spacing)


@pytest.mark.parametrize("shift", [(500.0, 0.0, 0.0), (0.0, -120.0, 0.0), (0.0, 0.0, 90.0)])
def test_sequences_that_do_not_overlap_are_refused(tmp_path: Path, shift: tuple[float, float, float]) -> None:
    data = brain_phantom((40, 40, 40))
    save_nifti(tmp_path / "t1.nii.gz", data, AFFINES["ras"])
    moved = AFFINES["ras"].copy()
    moved[:3, 3] += shift
    save_nifti(tmp_path / "t2.nii.gz", data, moved)

    with pytest.raises(ImageError, match="affine") as caught:
        preprocess_exam(_exam(tmp_path, t1="t1.nii.gz", t2="t2.nii.gz"), SMALL)
    assert "t2.nii.gz" in str(caught.value)


@pytest.mark.parametrize("case", ["one channel", "two channels", "outside the field of view", "bright speck"])
def test_auto_brain_mask_finds_the_phantom(case: str) -> None:
    shape = (32, 32, 32)
    phantom, truth = brain_phantom(shape), _ellipsoid(shape)
    if case == "two channels":
        image = np.stack([phantom, 3 * brain_phantom(shape, seed=1)])
    elif case == "outside the field of view":  # resampled images are NaN where no input voxel was
        image = np.full((1, 40, 40, 40), np.nan, dtype=np.float32)
        image[0, 4:36, 4:36, 4:36] = phantom
        truth = np.pad(truth, 4)
    elif case == "bright speck":  # a small component apart from the brain is dropped
        image = phantom[None].copy()
        image[0, 1:3, 1:3, 1:3] = 1000.0
    else:
        image = phantom[None]

    mask = auto_brain_mask(image)

    assert mask.shape == truth.shape and mask.dtype == bool
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.9
    assert not mask[:4, :4, :4].any()


_CUBE = np.arange(1, 9).reshape(2, 2, 2)  # [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]


@pytest.mark.parametrize(
    ("array", "start", "shape", "expected"),
    [
        pytest.param(_CUBE, (0, 0, 0), (2, 2, 2), _CUBE, id="same"),
        pytest.param(_CUBE, (-1, 0, 0), (3, 2, 2), [[[0, 0], [0, 0]], [[1, 2], [3, 4]], [[5, 6], [7, 8]]], id="pad"),
        pytest.param(_CUBE, (0, 0, 0), (2, 2, 3), [[[1, 2, 0], [3, 4, 0]], [[5, 6, 0], [7, 8, 0]]], id="pad-end"),
        pytest.param(_CUBE, (1, 0, 1), (1, 2, 1), [[[6], [8]]], id="crop"),
        pytest.param(_CUBE, (1, -1, 0), (1, 3, 2), [[[0, 0], [5, 6], [7, 8]]], id="crop-and-pad"),
        pytest.param(_CUBE, (5, 0, 0), (1, 1, 1), [[[0]]], id="outside"),
        pytest.param(np.stack([_CUBE, -_CUBE]), (1, 1, -1), (1, 1, 2), [[[[0, 7]]], [[[0, -7]]]], id="channels"),
    ],
)
def test_crop_or_pad(array: np.ndarray, start: tuple, shape: tuple, expected: list) -> None:
    out = crop_or_pad(array, np.array(start), shape)
    assert out.dtype == array.dtype
    np.testing.assert_array_equal(out, np.array(expected))


@pytest.mark.parametrize("affine", ["lps", "anisotropic", "oblique"])
def test_segmentation_is_resampled_with_nearest_neighbour(tmp_path: Path, affine: str) -> None:
    save_nifti(tmp_path / "t1.nii.gz", brain_phantom((40, 40, 40)), AFFINES[affine])
    index = np.stack(np.meshgrid(*(np.arange(40),) * 3, indexing="ij"))
    radius = np.linalg.norm(index - np.array([21, 19, 20])[:, None, None, None], axis=0)
    seg = np.select([radius < 3, radius < 5, radius < 8], [4, 2, 1], 0).astype(np.uint8)  # nested: 4 in 2 in 1
    save_nifti(tmp_path / "seg.nii.gz", seg, AFFINES[affine])

    result = preprocess_exam(_exam(tmp_path, t1="t1.nii.gz", seg="seg.nii.gz"), SMALL)

    assert result.has_seg
    assert set(np.unique(result.masks[1])) == {0, 1, 2, 4}  # linear interpolation would make 3s and lose 4s


@pytest.mark.parametrize("kind", ["seg", "brain_mask"])
@pytest.mark.parametrize("shift_mm", [0.0, 2.0])
def test_a_mask_on_its_images_passes_the_field_of_view_check(tmp_path: Path, kind: str, shift_mm: float) -> None:
    """The check that refuses a mask outside the images (tests/hostile) leaves one on them alone, a voxel's
    shift included, and a brain mask may hold any integer (255, 1000), not only 0/1."""
    save_nifti(tmp_path / "t1.nii.gz", brain_phantom((24, 24, 24)), AFFINES["ras"])
    affine = AFFINES["ras"].copy()
    affine[0, 3] += shift_mm
    inside = brain_phantom((24, 24, 24)) > 0
    save_nifti(tmp_path / "mask.nii.gz", (inside * (1 if kind == "seg" else 1000)).astype(np.int16), affine)

    result = preprocess_exam(_exam(tmp_path, t1="t1.nii.gz", **{kind: "mask.nii.gz"}), SMALL)

    assert result.masks[1 if kind == "seg" else 0].sum() > 0.9 * inside.sum()
