"""Corrupt inputs are refused, not cached (issue 14, class 3), and preprocessing sizes are bounded with
strict JSON (class 4, the manifest/cache part): a damaged ``.nii.gz``, a header without orientation, a
damaged cache array or index, absurd settings."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import brain_phantom
from umbif import SEQUENCES
from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.data import cache, preprocess
from umbif.data.cache import Cache, describe, read_index, run_preprocess, verify_entry
from umbif.data.datasets import CacheDataset
from umbif.data.io import ImageError, read_nifti
from umbif.data.manifest import Manifest
from umbif.data.preprocess import preprocess_exam

CONFIG = PreprocessConfig(shape=(24, 24, 24))
NAMES = ("e1", "e2", "e3")
ENV = {"COLUMNS": "250"}


def _rows(names: tuple[str, ...] = NAMES) -> list[dict[str, str]]:
    return [
        {"exam_id": n, "patient_id": f"p-{n}", "site": "s"} | {s: f"data/{n}/{n}_{s}.nii.gz" for s in SEQUENCES}
        for n in names
    ]


@pytest.fixture
def manifest(make_exam: Callable[..., Path], tmp_path: Path) -> Manifest:
    """Three small exams under ``tmp_path/data``, in a manifest rooted at ``tmp_path`` (also on disk)."""
    for seed, name in enumerate(NAMES):
        make_exam(name, shape=(24, 24, 24), seed=seed)
    table = Manifest(pd.DataFrame(_rows()), root=tmp_path)
    table.write(tmp_path / "manifest.csv")
    return table


@pytest.fixture
def cached(manifest: Manifest, tmp_path: Path) -> Path:
    """The three exams preprocessed into ``tmp_path/cache``."""
    assert run_preprocess(manifest, tmp_path / "cache", CONFIG).ok
    return tmp_path / "cache"


def _invoke(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result, " ".join((result.stdout + result.stderr).split())


# ----------------------------------------------------------------------------------------- damaged NIfTI
def _crc_mismatch(path: Path) -> None:
    """One voxel byte flipped, recompressed, with the CRC of the original content: what a flipped bit in
    transfer looks like to a reader that never reaches the gzip trailer."""
    raw = gzip.decompress(path.read_bytes())
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 0xFF
    blob = gzip.compress(bytes(bad), mtime=0)
    path.write_bytes(blob[:-8] + struct.pack("<II", zlib.crc32(raw), len(raw)))


def _flip_compressed_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def _gzip_bomb(path: Path) -> None:
    """The real file followed by a second gzip member of 100 MiB of zeros."""
    path.write_bytes(path.read_bytes() + gzip.compress(bytes(100 << 20), compresslevel=1))


@pytest.mark.parametrize("damage", [_crc_mismatch, _flip_compressed_byte, _gzip_bomb])
def test_damaged_nii_gz_is_refused_not_cached(manifest: Manifest, tmp_path: Path, damage: Callable) -> None:
    """Promise: the gzip CRC of a .nii.gz is verified; a flipped byte is quarantined, never cached as garbage."""
    broken = tmp_path / "data" / "e2" / "e2_t1c.nii.gz"
    damage(broken)

    with pytest.raises(ImageError, match=rf"^{broken}: .*(truncated or corrupt|more data than its header)"):
        read_nifti(broken)
    report = run_preprocess(manifest, tmp_path / "cache", CONFIG)

    assert [(f.exam_id, f.file) for f in report.failures] == [("e2", str(broken))]
    assert set(Cache(tmp_path / "cache").exam_ids) == {"e1", "e3"}


def test_nifti_without_sform_and_qform_is_refused(tmp_path: Path) -> None:
    """Promise: a NIfTI whose sform and qform codes are both 0 is refused (nibabel's fallback mirrors it)."""
    header = nib.Nifti1Header()
    header.set_data_shape((16, 16, 16))
    header.set_data_dtype(np.float32)
    header.set_zooms((2.0, 2.0, 2.0))
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(brain_phantom((16, 16, 16)), None, header=header), path)
    assert (int(nib.load(path).header["sform_code"]), int(nib.load(path).header["qform_code"])) == (0, 0)

    with pytest.raises(ImageError, match=rf"^{path}: the header has neither an sform nor a qform"):
        read_nifti(path)


# ----------------------------------------------------------------------------------------- damaged cache
def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", [_zero_bytes, _truncate, _flip_last_byte])
@pytest.mark.parametrize("kind", ["image", "masks"])
def test_preprocess_rebuilds_a_damaged_cache_array(
    manifest: Manifest, cached: Path, damage: Callable, kind: str
) -> None:
    """Promise: preprocess compares size and checksum and rebuilds an entry that fails ("rerun to rebuild")."""
    damage(cached / "exams" / f"e2.{kind}.npy")

    report = run_preprocess(manifest, cached, CONFIG)

    assert report.ok and (report.done, report.skipped) == (1, 2)
    for entry in read_index(cached)["exams"]:
        verify_entry(cached, entry)


def test_cache_info_verify_compares_the_size(cached: Path) -> None:
    """Promise: `cache info --verify` compares the size as well as the checksum, and says which it was."""
    _truncate(cached / "exams" / "e3.masks.npy")
    size = (cached / "exams" / "e3.masks.npy").stat().st_size

    (message,) = describe(cached, verify=True)["corrupt"]
    result, text = _invoke("cache", "info", cached, "--verify")

    assert "e3.masks.npy" in message and f"{size} bytes, not " in message
    assert result.exit_code == 1 and f"{size} bytes, not " in text and "rerun `umbif preprocess`" in text


@pytest.mark.parametrize("damage", [_zero_bytes, _truncate])
@pytest.mark.parametrize("kind", ["image", "masks"])
def test_damaged_cache_array_is_an_error_naming_the_exam(cached: Path, damage: Callable, kind: str) -> None:
    """Promise: a zero-byte or truncated .npy gives a clear error naming the exam, not numpy's EOFError."""
    damage(cached / "exams" / f"e2.{kind}.npy")
    reader = Cache(cached)

    with pytest.raises(
        cache.CacheError, match=rf"^exam 'e2': .*e2\.{kind}\.npy cannot be read.*rerun `umbif preprocess`"
    ):
        reader.load("e2", kind)
    with pytest.raises(cache.CacheError, match="exam 'e2'"):
        CacheDataset(reader, ["e2"], masks=True)[0]
    result, text = _invoke("cache", "show", cached, "--exam", "e2", "--out", cached / "e2.png")
    assert result.exit_code == 1 and "exam 'e2'" in text and f"e2.{kind}.npy" in text


def test_cache_array_of_the_wrong_shape_is_an_error(cached: Path) -> None:
    """Promise: a cache file that is not the array its entry describes names the exam (a swapped file)."""
    np.save(cached / "exams" / "e1.image.npy", np.zeros((4, 8, 8, 8), np.float16))

    with pytest.raises(cache.CacheError, match=r"^exam 'e1': .* holds float16 \[4, 8, 8, 8\], its entry says"):
        Cache(cached).load("e1", "image")


@pytest.mark.parametrize(
    ("name", "text"),
    [("index.json", "{not json"), ("index.json", "[1, 2]"), ("plan.json", '{"plan": 1}'), ("index.json", "\xff")],
)
def test_damaged_index_or_plan_is_one_clear_error(cached: Path, name: str, text: str) -> None:
    """Promise: a damaged index.json or plan.json names the file and says to rerun preprocess, no traceback."""
    (cached / name).write_text(text, encoding="latin-1")

    with pytest.raises(cache.CacheError, match=rf"{name}: .*rerun `umbif preprocess"):
        Cache(cached)
    for args in (["cache", "info", cached], ["cache", "show", cached, "--out", cached / "x.png"]):
        result, output = _invoke(*args)
        assert result.exit_code == 1 and f"{name}:" in output and "rerun `umbif preprocess" in output


def test_index_cannot_point_outside_the_cache(cached: Path, tmp_path: Path) -> None:
    """Promise: a file name read from index.json is one plain name inside the cache (no ../ traversal)."""
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((4, 24, 24, 24), np.float16))
    index = json.loads((cached / "index.json").read_text())
    index["exams"][0]["files"]["image"] = "../../secret.npy"
    (cached / "index.json").write_text(json.dumps(index))

    with pytest.raises(cache.CacheError, match="not a file name in the cache"):
        Cache(cached).load(index["exams"][0]["exam_id"], "image")


# ----------------------------------------------------------------------------------------- sizes and JSON
@pytest.mark.parametrize(
    "settings",
    [
        {"shape": (513, 96, 96)},
        {"shape": (4096, 4096, 4096)},
        {"spacing": (float("nan"),) * 3},
        {"spacing": (float("inf"),) * 3},
        {"spacing": (50.0, 2.0, 2.0)},
        {"max_voxels": 0},
        {"max_voxels": -1},
        {"max_voxels": 2**40},
        {"min_spacing_mm": 0.0},
        {"max_spacing_mm": float("nan")},
        {"min_spacing_mm": 5.0, "max_spacing_mm": 1.0},
        {"min_overlap": -0.1},
        {"min_overlap": 7.0},
    ],
)
def test_preprocess_settings_are_bounded(settings: dict) -> None:
    """Promise: upper bounds on preprocessing sizes; negative, zero and non-finite sizes rejected."""
    with pytest.raises(ValueError, match="PreprocessConfig"):
        PreprocessConfig.from_options(None, **settings)


@pytest.mark.parametrize("option", [["--spacing", "nan"], ["--shape", "600x8x8"]])
def test_absurd_preprocess_options_stop_before_anything_is_written(
    manifest: Manifest, tmp_path: Path, option: list[str]
) -> None:
    """Promise: absurd sizes are refused before any work (a NaN spacing wrote NaN into plan.json)."""
    result, text = _invoke("preprocess", tmp_path / "manifest.csv", "--out", tmp_path / "cache", *option)

    assert result.exit_code == 1 and "bad settings" in text
    assert not (tmp_path / "cache").exists()


def test_memory_is_estimated_before_the_grid_is_allocated(manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promise: a memory estimate of the exam is checked before allocating (a huge grid is refused, not OOM)."""
    monkeypatch.setattr(preprocess, "available_memory", lambda: 1 << 20)  # 1 MiB free

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("resampled before the memory check")

    monkeypatch.setattr(preprocess, "resample", never)

    with pytest.raises(ImageError, match=r"^exam e1: preprocessing needs about .* GiB .* but 0.0 GiB are free"):
        preprocess_exam(manifest.exam(0), CONFIG)


def test_cache_json_is_strict(manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promise: every JSON is written strict (allow_nan=False): a NaN quarantines the exam, never a 'NaN' file."""
    real = cache.preprocess_exam

    def with_nan(exam: object, config: PreprocessConfig) -> preprocess.Preprocessed:
        result = real(exam, config)
        result.stats["t1"]["mean"] = float("nan")
        return result

    monkeypatch.setattr(cache, "preprocess_exam", with_nan)
    report = run_preprocess(manifest, tmp_path / "cache", CONFIG)

    assert not report.ok and {f.exam_id for f in report.failures} == set(NAMES)
    for path in (tmp_path / "cache").rglob("*.json"):
        assert "NaN" not in path.read_text(), path
        json.loads(path.read_text())
    assert Cache(tmp_path / "cache").exam_ids == []
