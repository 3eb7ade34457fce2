"""CacheDataset: four-channel items with absent sequences zeroed, masks, exam selection, memory-mapped loading,
batching with a DataLoader, and checksum verification."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import AFFINES, save_nifti
from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data.cache import read_index, run_preprocess
from umbif.data.datasets import CacheDataset
from umbif.data.manifest import Manifest

CONFIG = PreprocessConfig(shape=(24, 24, 24), spacing=(2.0, 2.0, 2.0))
PRESENT = {"full": SEQUENCES, "partial": ("t2", "flair")}  # exam -> sequences it has


@pytest.fixture
def cache_dir(make_exam: Callable[..., Path], tmp_path: Path) -> Path:
    """A cache of exam "full" (four sequences and a tumour segmentation) and "partial" (T2 and FLAIR)."""
    rows = []
    for name, sequences in PRESENT.items():
        make_exam(name, sequences=sequences, shape=(24, 24, 24))
        rows.append(
            {"exam_id": name, "patient_id": f"p-{name}", "site": "s"}
            | {s: f"data/{name}/{name}_{s}.nii.gz" for s in sequences}
        )
    seg = np.zeros((24, 24, 24), dtype=np.uint8)
    seg[10:14, 10:14, 10:14] = 1
    seg[11:13, 11:13, 11:13] = 4
    save_nifti(tmp_path / "data" / "full" / "seg.nii.gz", seg, AFFINES["ras"])
    rows[0]["seg"] = "data/full/seg.nii.gz"
    report = run_preprocess(Manifest(pd.DataFrame(rows), root=tmp_path), tmp_path / "cache", CONFIG)
    assert report.ok, report.failures
    return tmp_path / "cache"


def _stored(cache_dir: Path, exam_id: str, kind: str) -> np.ndarray:
    entry = next(e for e in read_index(cache_dir)["exams"] if e["exam_id"] == exam_id)
    return np.load(cache_dir / "exams" / entry["files"][kind])


def _item(dataset: CacheDataset, exam_id: str) -> dict:
    return next(dataset[i] for i in range(len(dataset)) if dataset.entries[i]["exam_id"] == exam_id)


@pytest.mark.parametrize("exam_id", list(PRESENT))
def test_item_has_four_channels_with_absent_ones_zero(cache_dir: Path, exam_id: str) -> None:
    item = _item(CacheDataset(cache_dir), exam_id)

    assert item["exam_id"] == exam_id
    assert item["image"].shape == (len(SEQUENCES), *CONFIG.shape) and item["image"].dtype == torch.float16
    present = [s in PRESENT[exam_id] for s in SEQUENCES]
    assert item["present"].tolist() == present
    image = item["image"].numpy()
    np.testing.assert_array_equal(image[present], _stored(cache_dir, exam_id, "image"))
    assert not image[np.logical_not(present)].any()
    assert all(channel.any() for channel in image[present])
    assert set(item) == {"image", "present", "exam_id"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_dtype_converts_the_stored_values(cache_dir: Path, dtype: torch.dtype) -> None:
    item = _item(CacheDataset(cache_dir, dtype=dtype), "full")
    assert item["image"].dtype == dtype
    np.testing.assert_array_equal(item["image"].numpy(), _stored(cache_dir, "full", "image").astype(np.float32))


@pytest.mark.parametrize("exam_id", list(PRESENT))
def test_masks(cache_dir: Path, exam_id: str) -> None:
    item = _item(CacheDataset(cache_dir, masks=True), exam_id)

    stored = _stored(cache_dir, exam_id, "masks")
    assert item["brain_mask"].dtype == torch.bool and item["seg"].dtype == torch.uint8
    np.testing.assert_array_equal(item["brain_mask"].numpy(), stored[0] == 1)
    np.testing.assert_array_equal(item["seg"].numpy(), stored[1])
    assert item["brain_mask"].any()
    assert set(np.unique(item["seg"].numpy())) == ({0, 1, 4} if exam_id == "full" else {0})


@pytest.mark.parametrize("exam_ids", [["partial", "full"], ["full", "partial"], ["partial"]])
def test_exam_ids_restrict_and_order(cache_dir: Path, exam_ids: list[str]) -> None:
    dataset = CacheDataset(cache_dir, exam_ids=exam_ids)
    assert len(dataset) == len(exam_ids)
    assert [dataset[i]["exam_id"] for i in range(len(dataset))] == exam_ids


def test_unknown_exam_id_is_named(cache_dir: Path) -> None:
    with pytest.raises(KeyError, match="nope"):
        CacheDataset(cache_dir, exam_ids=["full", "nope"])


def test_arrays_are_memory_mapped(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modes = []
    load = np.load

    def recording_load(*args, **kwargs):
        modes.append(kwargs.get("mmap_mode"))
        return load(*args, **kwargs)

    monkeypatch.setattr(np, "load", recording_load)
    _item(CacheDataset(cache_dir, masks=True), "partial")

    assert modes == ["r", "r"]  # image and masks, neither read whole into memory first


def test_dataloader_collates_a_batch(cache_dir: Path) -> None:
    loader = DataLoader(CacheDataset(cache_dir, exam_ids=["full", "partial"], masks=True), batch_size=2, num_workers=0)

    (batch,) = list(loader)

    assert batch["image"].shape == (2, len(SEQUENCES), *CONFIG.shape)
    assert batch["present"].tolist() == [[True] * 4, [False, False, True, True]]
    assert batch["exam_id"] == ["full", "partial"]
    assert batch["brain_mask"].shape == (2, *CONFIG.shape)


@pytest.mark.parametrize("verify", [True, False])
def test_verify_detects_a_corrupted_file(cache_dir: Path, verify: bool) -> None:
    path = cache_dir / "exams" / "partial.image.npy"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # a changed value in the last voxel; the file still loads
    path.write_bytes(bytes(data))
    dataset = CacheDataset(cache_dir, exam_ids=["full", "partial"], verify=verify)

    dataset[0]  # the intact exam loads either way
    if verify:
        with pytest.raises(ValueError, match=r"partial\.image\.npy"):
            dataset[1]
    else:
        assert dataset[1]["image"].shape[0] == len(SEQUENCES)  # without verify the change goes unnoticed
