"""The real UPENN-GBM exam (../shared/data/upenn-gbm-sample: LPS, 1 mm, 240x240x155, skull-stripped)
ingested with the folder adapter and preprocessed: the result must match what is known of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data.cache import run_preprocess, verify_entry
from umbif.data.datasets import CacheDataset
from umbif.data.manifest import errors, validate
from umbif.data.sources.folder import ingest_folder

CONFIG = PreprocessConfig()  # the defaults users get: 2 mm isotropic, 96^3


@pytest.fixture(scope="module")
def cached(upenn_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("upenn") / "data"
    shutil.copytree(upenn_sample, root / upenn_sample.name)
    report = ingest_folder(root, site="upenn")
    report.manifest.write(root / "manifest.csv")
    cache = root.parent / "cache"
    run = run_preprocess(report.manifest, cache, CONFIG)
    return {"ingest": report, "run": run, "cache": cache, "files": root / upenn_sample.name}


def test_folder_adapter_places_every_sequence(cached: dict) -> None:
    manifest = cached["ingest"].manifest
    assert len(manifest) == 1
    row = manifest.table.iloc[0]
    expected = {"t1": "00001_t1n", "t1c": "00001_t1c", "t2": "00001_t2w", "flair": "00001_t2f"}
    for sequence, stem in expected.items():
        assert Path(row[sequence]).name == f"{stem}.nii.gz"
    assert not errors(validate(manifest))


def test_preprocessed_exam_is_ras_2mm_and_normalised(cached: dict) -> None:
    assert cached["run"].ok and cached["run"].done == 1
    dataset = CacheDataset(cached["cache"], masks=True)
    entry = dataset.entries[0]
    verify_entry(cached["cache"], entry)
    affine = np.asarray(entry["affine"])
    # RAS order at 2 mm: a positive diagonal with no rotation, the configured grid
    np.testing.assert_allclose(affine[:3, :3], np.diag(CONFIG.spacing))
    item = dataset[0]
    assert tuple(item["image"].shape) == (4, *CONFIG.shape)
    assert item["present"].all()
    brain = item["brain_mask"].numpy()
    image = item["image"].float().numpy()
    for channel, sequence in enumerate(SEQUENCES):
        values = image[channel][brain]
        assert abs(values.mean()) < 0.02, sequence
        assert values.std() == pytest.approx(1.0, abs=0.02), sequence
        assert not image[channel][~brain].any(), sequence  # zero outside the brain
    # brain centred: its bounding box is centred in the grid (to a voxel), nothing clipped
    voxels = np.argwhere(brain)
    box_centre = (voxels.min(axis=0) + voxels.max(axis=0)) / 2
    np.testing.assert_allclose(box_centre, (np.array(CONFIG.shape) - 1) / 2, atol=1.0)
    assert entry["brain_clipped"] == 0


def test_brain_volume_and_position_match_the_source(cached: dict) -> None:
    """The automatic mask of this skull-stripped exam equals its nonzero voxels, in the same place."""
    source = nib.load(cached["files"] / "00001_t1c.nii.gz")
    nonzero = np.asarray(source.dataobj) != 0
    voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
    entry = CacheDataset(cached["cache"]).entries[0]
    item = CacheDataset(cached["cache"], masks=True)[0]
    brain = item["brain_mask"].numpy()
    assert brain.sum() * np.prod(CONFIG.spacing) / 1000 == pytest.approx(nonzero.sum() * voxel_ml, rel=0.05)
    # centre of the brain in scanner RAS mm, from the source file and from the cache entry
    source_centre = nib.affines.apply_affine(source.affine, np.argwhere(nonzero).mean(axis=0))
    cache_centre = nib.affines.apply_affine(np.asarray(entry["affine"]), np.argwhere(brain).mean(axis=0))
    np.testing.assert_allclose(cache_centre, source_centre, atol=2.0)
