"""Frozen-encoder embeddings: equal to the encoder on the cached exam, stored, reused and extended."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelled_cohort import TinyCohort, build
from umbif.adapt import embed as embed_module
from umbif.adapt.embed import embed_exams, encoder_fingerprint
from umbif.data.datasets import CacheDataset
from umbif.models.io import load_encoder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> TinyCohort:
    return build(tmp_path_factory.mktemp("cohort"), patients=8, sites=2)


def test_embeddings_equal_the_encoder_on_the_cached_exam(cohort: TinyCohort) -> None:
    ids = ["P001-1", "P000-0", "P006-0"]  # P006 has no T1
    result = embed_exams(cohort.encoder, cohort.cache, ids)
    assert result.exam_ids == tuple(ids)
    encoder = load_encoder(cohort.encoder)
    items = [CacheDataset(cohort.cache, ids, dtype=torch.float32)[i] for i in range(3)]
    with torch.no_grad():
        expected = encoder(torch.stack([i["image"] for i in items]), torch.stack([i["present"] for i in items]))
    np.testing.assert_allclose(result.values, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert not items[2]["present"][0] and items[0]["present"].all()
    np.testing.assert_array_equal(result.lookup(["P006-0"]), result.values[2:3])
    with pytest.raises(KeyError, match="no embedding"):
        result.lookup(["P999-0"])


def test_store_is_reused_and_extended(cohort: TinyCohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = embed_exams(cohort.encoder, cohort.cache, ["P000-0", "P000-1"], store_dir=tmp_path)
    store = tmp_path / "embeddings" / f"{first.key}.npz"
    assert store.is_file() and first.key.startswith(encoder_fingerprint(cohort.encoder))
    loads = []
    real = embed_module.load_encoder
    monkeypatch.setattr(embed_module, "load_encoder", lambda *a, **k: loads.append(a) or real(*a, **k))
    again = embed_exams(cohort.encoder, cohort.cache, ["P000-1"], store_dir=tmp_path)
    assert loads == []  # nothing new: the encoder is not even loaded
    np.testing.assert_array_equal(again.values, first.values[1:])
    more = embed_exams(cohort.encoder, cohort.cache, ["P000-1", "P002-0"], store_dir=tmp_path)
    assert len(loads) == 1
    with np.load(store) as data:
        assert list(data["exam_ids"]) == ["P000-0", "P000-1", "P002-0"]
    np.testing.assert_array_equal(more.values[0], first.values[1])


def test_another_encoder_gets_another_store(cohort: TinyCohort, tmp_path: Path) -> None:
    from umbif.models.io import save_encoder

    encoder = load_encoder(cohort.encoder)
    with torch.no_grad():
        encoder.cls_token.add_(1.0)
    other = save_encoder(encoder, encoder.config, tmp_path / "other")
    a = embed_exams(cohort.encoder, cohort.cache, ["P000-0"], store_dir=tmp_path)
    b = embed_exams(other, cohort.cache, ["P000-0"], store_dir=tmp_path)
    assert a.key != b.key and not np.allclose(a.values, b.values)
    assert len(list((tmp_path / "embeddings").glob("*.npz"))) == 2


def test_damaged_store_is_named(cohort: TinyCohort, tmp_path: Path) -> None:
    key = embed_exams(cohort.encoder, cohort.cache, ["P000-0"], store_dir=tmp_path).key
    (tmp_path / "embeddings" / f"{key}.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"damaged embedding store.*delete it"):
        embed_exams(cohort.encoder, cohort.cache, ["P000-0"], store_dir=tmp_path)


def test_missing_encoder_says_how_to_make_one(cohort: TinyCohort, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="umbif export"):
        embed_exams(tmp_path / "nothing", cohort.cache, ["P000-0"])


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> TinyCohort:
    return build(tmp_path_factory.mktemp("segmented"), patients=4, sites=2, seg=True)


def test_lesion_readout_pools_inside_the_segmentation(segmented: TinyCohort, tmp_path: Path) -> None:
    from umbif.models.readout import readout_features

    ids = ["P000-0", "P001-1"]
    result = embed_exams(segmented.encoder, segmented.cache, ids, store_dir=tmp_path, readout="lesion")
    encoder = load_encoder(segmented.encoder)
    items = [CacheDataset(segmented.cache, ids, dtype=torch.float32, masks=True)[i] for i in range(2)]
    images, present = torch.stack([i["image"] for i in items]), torch.stack([i["present"] for i in items])
    seg = torch.stack([i["seg"] for i in items])
    assert int((seg > 0).sum()) > 0
    expected, fallback = readout_features(encoder, images, present, seg, "lesion")
    assert result.values.shape == (2, 3 * encoder.config.dim) and not fallback.any()
    np.testing.assert_allclose(result.values, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert result.key.endswith("-lesion") and result.key != embed_exams(segmented.encoder, segmented.cache, ids).key
    note = json.loads((tmp_path / "embeddings" / f"{result.key}.json").read_text())
    assert note["readout"] == "lesion" and note["fallbacks"] == 0


def test_lesion_readout_without_segmentation_counts_the_fallbacks(cohort: TinyCohort, tmp_path: Path) -> None:
    result = embed_exams(cohort.encoder, cohort.cache, ["P000-0"], store_dir=tmp_path, readout="lesion")
    note = json.loads((tmp_path / "embeddings" / f"{result.key}.json").read_text())
    assert note["fallbacks"] == 1
    with pytest.raises(ValueError, match="unknown readout"):
        embed_exams(cohort.encoder, cohort.cache, ["P000-0"], readout="max")


def test_tumour_crop_is_centred_on_the_tumour_box() -> None:
    from umbif.adapt.embed import tumour_crop

    images = torch.arange(2 * 1 * 8 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8, 8)
    seg = torch.zeros(2, 8, 8, 8, dtype=torch.uint8)
    seg[0, 5:8, 5:8, 5:8] = 1  # box centre 6 -> a 4-voxel box starts at 4 (6 - 1.5, floored), inside the grid
    crops, missing = tumour_crop(images, seg, (4, 4, 4))
    assert missing == 1 and crops.shape == (2, 1, 4, 4, 4)
    torch.testing.assert_close(crops[0], images[0, :, 4:8, 4:8, 4:8])
    torch.testing.assert_close(crops[1], images[1, :, 2:6, 2:6, 2:6])  # no tumour: the central box


def test_size_features_are_log_compartment_volumes(segmented: TinyCohort) -> None:
    from umbif.baselines.sizes import SIZE_FEATURES, size_features
    from umbif.data.cache import Cache

    cache = Cache(segmented.cache)
    sizes = size_features(cache, ["P000-0", "P001-1"])
    seg = np.asarray(cache.load("P000-0", "masks")[1])
    ml = np.prod(cache.preprocess["spacing"]) / 1000.0
    expected = np.log1p(
        ml
        * np.array([(seg == 4).sum(), (seg == 1).sum(), (seg == 2).sum(), np.isin(seg, (1, 4)).sum(), (seg > 0).sum()])
    )
    np.testing.assert_allclose(sizes.values[0], expected, rtol=1e-6)
    assert sizes.values.shape == (2, len(SIZE_FEATURES)) and sizes.values[:, 1].min() > 0
