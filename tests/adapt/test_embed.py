"""Frozen-encoder embeddings: equal to the encoder on the cached exam, stored, reused and extended."""

from __future__ import annotations

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
