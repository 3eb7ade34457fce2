"""The exam cache: round trip with checksums, skip and rebuild rules, quarantine, resume after an interrupt or
a killed process, shards, worker processes, and the `umbif preprocess` command."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import save_nifti
from umbif import SEQUENCES
from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.data import cache
from umbif.data.cache import Shard, read_index, run_preprocess, verify_entry
from umbif.data.manifest import Manifest
from umbif.data.preprocess import preprocess_exam

CONFIG = PreprocessConfig(shape=(24, 24, 24), spacing=(2.0, 2.0, 2.0))
NAMES = ("e1", "e2", "e3", "e4", "e5")


def _row(name: str, prefix: str = "data/") -> dict[str, str]:
    return {"exam_id": name, "patient_id": f"p-{name}", "site": "s"} | {
        s: f"{prefix}{name}/{name}_{s}.nii.gz" for s in SEQUENCES
    }


@pytest.fixture
def manifest(make_exam: Callable[..., Path], tmp_path: Path) -> Manifest:
    """Five small exams under ``tmp_path/data``, in a manifest rooted at ``tmp_path``."""
    for seed, name in enumerate(NAMES):
        make_exam(name, shape=(24, 24, 24), seed=seed)
    return Manifest(pd.DataFrame([_row(n) for n in NAMES]), root=tmp_path)


def _exam_files(cache_dir: Path) -> dict[str, int]:
    """Every file of the exams folder, temporary ones included, with its modification time."""
    return {p.name: p.stat().st_mtime_ns for p in (cache_dir / "exams").iterdir()}


def _entry_names(cache_dir: Path) -> set[str]:
    """Exams with an entry file on disk (what makes an exam count as cached)."""
    return {p.name.removesuffix(".json") for p in (cache_dir / "exams").glob("*.json") if ".failed" not in p.name}


def _indexed(cache_dir: Path) -> dict[str, dict]:
    return {e["exam_id"]: e for e in read_index(cache_dir)["exams"]}


def _quarantine(cache_dir: Path) -> list[dict[str, str]]:
    with (cache_dir / "quarantine.csv").open() as handle:
        return list(csv.DictReader(handle))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_round_trip_matches_preprocess_exam_and_checksums(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    report = run_preprocess(manifest, out, CONFIG)

    assert report.ok and (report.done, report.skipped) == (len(NAMES), 0)
    entries = _indexed(out)
    assert set(entries) == set(NAMES)
    for index, name in enumerate(NAMES):
        expected = preprocess_exam(manifest.exam(index), CONFIG)
        entry = entries[name]
        image = np.load(out / "exams" / entry["files"]["image"])
        masks = np.load(out / "exams" / entry["files"]["masks"])
        assert image.dtype == np.float16 and masks.dtype == np.uint8
        np.testing.assert_array_equal(image, expected.image.astype(np.float16))
        np.testing.assert_array_equal(masks, expected.masks)
        np.testing.assert_allclose(entry["affine"], expected.affine)
        assert entry["sequences"] == list(SEQUENCES)
        assert set(entry["sha256"]) == {"image", "masks"}
        verify_entry(out, entry)
    assert not any(name.endswith(".tmp") for name in _exam_files(out))


@pytest.mark.parametrize("kind", ["image", "masks"])
def test_verify_entry_detects_a_flipped_byte(manifest: Manifest, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "cache"
    run_preprocess(manifest, out, CONFIG)
    entry = _indexed(out)["e2"]
    path = out / "exams" / entry["files"][kind]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(ValueError, match=re.escape(entry["files"][kind]) + ".*checksum mismatch for exam e2"):
        verify_entry(out, entry)
    verify_entry(out, _indexed(out)["e1"])  # the other exams are untouched


def test_rerun_skips_and_rewrites_nothing(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    run_preprocess(manifest, out, CONFIG)
    before = _exam_files(out)

    report = run_preprocess(manifest, out, CONFIG)

    assert report.ok and (report.done, report.skipped) == (0, len(NAMES))
    assert _exam_files(out) == before
    assert set(_indexed(out)) == set(NAMES)


@pytest.mark.parametrize(
    "change",
    [{"spacing": (3.0, 3.0, 3.0)}, {"shape": (16, 16, 16)}, {"zero_outside_mask": False}],
    ids=["spacing", "shape", "zero_outside_mask"],
)
def test_changed_config_rebuilds_and_leaves_old_entries_out_of_the_index(
    manifest: Manifest, tmp_path: Path, change: dict
) -> None:
    out = tmp_path / "cache"
    run_preprocess(manifest, out, CONFIG)
    old = _indexed(out)
    config = CONFIG.model_copy(update=change)
    first_three = Manifest(manifest.table.iloc[:3], root=manifest.root)

    report = run_preprocess(first_three, out, config)

    assert (report.done, report.skipped) == (3, 0)
    new = _indexed(out)
    assert set(new) == set(NAMES[:3])  # e4 and e5 still have entries on disk, made with the old config
    for name in NAMES[:3]:
        assert new[name]["plan_fingerprint"] != old[name]["plan_fingerprint"]
        assert new[name]["spacing"] == list(config.spacing)
        assert np.load(out / "exams" / new[name]["files"]["image"]).shape[1:] == config.shape
        verify_entry(out, new[name])


@pytest.mark.parametrize("how", ["touch", "replace"])
def test_changed_input_file_rebuilds_that_exam_only(
    manifest: Manifest, make_exam: Callable[..., Path], tmp_path: Path, how: str
) -> None:
    out = tmp_path / "cache"
    run_preprocess(manifest, out, CONFIG)
    before = _exam_files(out)
    old_image = np.load(out / "exams" / "e2.image.npy")
    changed = tmp_path / "data" / "e2" / "e2_flair.nii.gz"
    if how == "touch":
        stat = changed.stat()
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    else:
        make_exam("e2", shape=(24, 24, 24), seed=99)  # rewrites every file of e2 with other noise

    report = run_preprocess(manifest, out, CONFIG)

    assert (report.done, report.skipped) == (1, len(NAMES) - 1)
    after = _exam_files(out)
    assert {name for name in before if after[name] != before[name]} == {
        "e2.image.npy",
        "e2.masks.npy",
        "e2.json",
    }
    new_image = np.load(out / "exams" / "e2.image.npy")
    assert np.array_equal(new_image, old_image) == (how == "touch")
    verify_entry(out, _indexed(out)["e2"])


def test_corrupt_exam_is_quarantined_and_the_others_cached(
    manifest: Manifest, make_exam: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    broken = tmp_path / "data" / "e3" / "e3_t2.nii.gz"
    _truncate(broken)

    report = run_preprocess(manifest, out, CONFIG)

    assert not report.ok
    assert report.done == len(NAMES) - 1
    assert [(f.exam_id, f.file) for f in report.failures] == [("e3", str(broken.resolve()))]
    assert set(_indexed(out)) == set(NAMES) - {"e3"}
    (row,) = _quarantine(out)
    assert (row["exam_id"], row["file"]) == ("e3", str(broken.resolve()))
    assert "e3_t2.nii.gz" in row["reason"] and ("truncated" in row["reason"] or "not a readable" in row["reason"])
    assert json.loads((out / "exams" / "e3.failed.json").read_text())["exam_id"] == "e3"
    assert not (out / "exams" / "e3.image.npy").exists()

    make_exam("e3", shape=(24, 24, 24), seed=2)  # the file is fixed: the next run caches e3 and clears its record
    report = run_preprocess(manifest, out, CONFIG)

    assert report.ok and (report.done, report.skipped) == (1, len(NAMES) - 1)
    assert set(_indexed(out)) == set(NAMES)
    assert _quarantine(out) == []
    assert not (out / "exams" / "e3.failed.json").exists()


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ({"t1": "../elsewhere/x.nii.gz"}, "outside the manifest root"),
        ({}, "no sequence"),
    ],
    ids=["escaping path", "no sequence"],
)
def test_bad_manifest_row_is_quarantined(
    manifest: Manifest, tmp_path: Path, cells: dict[str, str], reason: str
) -> None:
    save_nifti(tmp_path / "elsewhere" / "x.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))  # exists, outside
    rows = [_row(n, prefix="") for n in NAMES[:2]] + [{"exam_id": "bad", "patient_id": "p-bad", "site": "s", **cells}]
    table = Manifest(pd.DataFrame(rows), root=tmp_path / "data")
    out = tmp_path / "cache"

    report = run_preprocess(table, out, CONFIG)

    assert report.done == 2
    assert [f.exam_id for f in report.failures] == ["bad"]
    assert reason in report.failures[0].reason
    assert set(_indexed(out)) == {"e1", "e2"}
    (row,) = _quarantine(out)
    assert row["exam_id"] == "bad" and reason in row["reason"]
    assert (out / "exams" / "bad.failed.json").is_file()


def test_resume_after_keyboard_interrupt(manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cache"
    write_text = cache.write_text_atomic

    def interrupt_third_entry(path: Path, text: str) -> None:
        if Path(path).name == "e3.json":  # e3's arrays are on disk, its entry is not: a half-done exam
            raise KeyboardInterrupt
        write_text(path, text)

    with monkeypatch.context() as patch:
        patch.setattr(cache, "write_text_atomic", interrupt_third_entry)
        with pytest.raises(KeyboardInterrupt):
            run_preprocess(manifest, out, CONFIG)

    assert set(_indexed(out)) == {"e1", "e2"}  # the index is rebuilt on the way out; half-done e3 is not in it
    assert _entry_names(out) == {"e1", "e2"}
    assert (out / "exams" / "e3.image.npy").exists()
    assert not any(name.endswith(".tmp") for name in _exam_files(out))
    for entry in _indexed(out).values():
        verify_entry(out, entry)
    stale = out / "exams" / ".e3.image.npy.killed.tmp"  # what a writer killed mid-file leaves behind
    stale.write_bytes(b"\x93NUMPY")
    two_days_ago = time.time() - 2 * 24 * 3600  # no live writer's tag: stale once it is old
    os.utime(stale, (two_days_ago, two_days_ago))
    before = _exam_files(out)

    report = run_preprocess(manifest, out, CONFIG)

    assert report.ok and (report.done, report.skipped) == (3, 2)
    after = _exam_files(out)
    kept = [name for name in before if name.startswith(("e1.", "e2."))]
    assert len(kept) == 6 and all(after[name] == before[name] for name in kept)  # e1 and e2 were not rewritten
    assert not stale.exists()
    assert set(_indexed(out)) == set(NAMES)
    for entry in _indexed(out).values():
        verify_entry(out, entry)


# `umbif preprocess` with each exam slowed down, so the kill lands while exams are still to do
_SLOW_CLI = """
import time
import umbif.data.cache as cache
fast = cache.preprocess_exam
def slow(*args, **kwargs):
    time.sleep(0.3)
    return fast(*args, **kwargs)
cache.preprocess_exam = slow
from umbif.cli import app
app()
"""


def test_resume_after_the_process_is_killed(manifest: Manifest, tmp_path: Path) -> None:
    manifest.write(tmp_path / "manifest.csv")
    out = tmp_path / "cache"
    log = tmp_path / "preprocess.log"
    command = [sys.executable, "-c", _SLOW_CLI, "preprocess", "manifest.csv", "--out", "cache", "--shape", "24x24x24"]
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    while not (out / "exams").is_dir() or not _entry_names(out):
        assert process.poll() is None, f"umbif preprocess ended before the kill:\n{log.read_text()}"
        assert time.monotonic() < deadline, "no cache entry after 60 s"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    cached = _entry_names(out)
    assert 1 <= len(cached) < len(NAMES)

    report = run_preprocess(Manifest.read(tmp_path / "manifest.csv"), out, CONFIG)

    assert report.ok and (report.done, report.skipped) == (len(NAMES) - len(cached), len(cached))
    assert set(_indexed(out)) == set(NAMES)
    for entry in _indexed(out).values():
        verify_entry(out, entry)
    assert not any(name.endswith(".tmp") for name in _exam_files(out))


def test_shards_split_the_exams_and_share_one_cache(manifest: Manifest, tmp_path: Path) -> None:
    """Each shard caches its own exams and writes its own part, never the index; one merge indexes them all."""
    shards = [Shard.parse("0/2"), Shard.parse("1/2")]
    owned = [{name for name in NAMES if shard.owns(name)} for shard in shards]
    assert all(owned) and owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == set(NAMES)
    out = tmp_path / "cache"

    first = run_preprocess(manifest, out, CONFIG, shard=shards[0])
    assert (first.done, first.skipped) == (len(owned[0]), 0)
    assert not (out / "index.json").exists()
    assert first.part == out / "index.d" / "shard-0-of-2.json"
    assert set(json.loads(first.part.read_text())["exams"]) == owned[0]
    second = run_preprocess(manifest, out, CONFIG, shard=shards[1])
    report = cache.merge_index(out)

    assert (second.done, second.skipped) == (len(owned[1]), 0)
    assert (report.exams, report.parts, report.missing_shards, report.ok) == (len(NAMES), 2, [], True)
    assert set(_indexed(out)) == set(NAMES)
    for entry in _indexed(out).values():
        verify_entry(out, entry)


def test_worker_processes_give_the_same_cache(manifest: Manifest, tmp_path: Path) -> None:
    serial = run_preprocess(manifest, tmp_path / "serial", CONFIG, workers=1)
    parallel = run_preprocess(manifest, tmp_path / "parallel", CONFIG, workers=2)

    assert serial.ok and parallel.ok and serial.done == parallel.done == len(NAMES)
    one, two = _indexed(tmp_path / "serial"), _indexed(tmp_path / "parallel")
    assert {name: entry["sha256"] for name, entry in one.items()} == {
        name: entry["sha256"] for name, entry in two.items()
    }


@pytest.mark.parametrize(("corrupt", "exit_code"), [(False, 0), (True, 1)])
def test_preprocess_command(manifest: Manifest, tmp_path: Path, corrupt: bool, exit_code: int) -> None:
    manifest.write(tmp_path / "manifest.csv")
    if corrupt:
        _truncate(tmp_path / "data" / "e4" / "e4_t1.nii.gz")
    out = tmp_path / "cache"

    result = CliRunner().invoke(
        app, ["preprocess", str(tmp_path / "manifest.csv"), "--out", str(out), "--shape", "24x24x24"]
    )

    assert result.exit_code == exit_code, result.output
    assert set(_indexed(out)) == set(NAMES) - ({"e4"} if corrupt else set())
    assert [row["exam_id"] for row in _quarantine(out)] == (["e4"] if corrupt else [])
    assert json.loads((out / "plan.json").read_text())["preprocess"]["shape"] == [24, 24, 24]


def test_describe_and_cache_info_command(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    manifest.table.loc[1, "t1c"] = ""  # one exam without T1c
    run_preprocess(manifest, out, CONFIG)
    info = cache.describe(out, verify=True)
    assert (info["exams"], info["quarantined"], info["corrupt"]) == (len(NAMES), 0, [])
    assert info["sequence_counts"] == {"t1": 5, "t1c": 4, "t2": 5, "flair": 5}
    # float16 image + uint8 masks + two .npy headers per exam
    assert info["bytes_per_exam"] == sum(2 * n * 24**3 for n in (4, 4, 3, 4, 4)) // 5 + 2 * 24**3 + 256
    result = CliRunner().invoke(app, ["cache", "info", str(out), "--verify"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "5 exams cached" in result.stdout and "every file matches its checksum" in result.stdout

    first = _indexed(out)["e1"]
    image = out / "exams" / first["files"]["image"]
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["cache", "info", str(out), "--verify"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "checksum mismatch for exam e1" in result.stderr


def test_cache_show_draws_a_png(manifest: Manifest, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    run_preprocess(manifest, out, CONFIG)
    png = tmp_path / "exam.png"
    result = CliRunner().invoke(app, ["cache", "show", str(out), "--exam", "e2", "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = CliRunner().invoke(app, ["cache", "show", str(out), "--exam", "nope", "--out", str(png)])
    assert result.exit_code == 1 and "nope" in result.stderr


def test_cache_reader_gives_plan_grid_exams_and_arrays(manifest: Manifest, tmp_path: Path) -> None:
    from umbif.data.cache import Cache, plan_fingerprint

    out = tmp_path / "cache"
    run_preprocess(manifest, out, CONFIG)
    cache = Cache(out)
    assert cache.fingerprint == plan_fingerprint(CONFIG) == read_index(out)["plan_fingerprint"]
    assert cache.grid == (24, 24, 24) and cache.preprocess == CONFIG.to_dict()
    assert sorted(cache.exam_ids) == sorted(NAMES) and len(cache) == len(NAMES)
    assert "e3" in cache and "nope" not in cache
    assert cache.select(["nope", "e4", "e1"]) == ["e4", "e1"]
    expected = preprocess_exam(manifest.exam(2), CONFIG)
    np.testing.assert_array_equal(cache.load("e3", "image"), expected.image.astype(np.float16))
    np.testing.assert_array_equal(cache.load("e3", "masks"), expected.masks)
    cache.verify("e3")
    with pytest.raises(KeyError, match="exam 'nope' is not in the cache"):
        cache.entry("nope")


def test_cache_reader_of_a_folder_without_a_cache_says_what_to_run(tmp_path: Path) -> None:
    from umbif.data.cache import Cache

    with pytest.raises(FileNotFoundError, match="run `umbif preprocess MANIFEST --out"):
        Cache(tmp_path)


def test_two_concurrent_runs_give_a_correct_cache(manifest: Manifest, tmp_path: Path) -> None:
    """Two `umbif preprocess` processes on one cache at once (a user starting a run twice): both succeed and
    the cache holds every exam, byte-identical to a run alone."""
    manifest.write(tmp_path / "manifest.csv")
    command = [sys.executable, "-m", "umbif", "preprocess", "manifest.csv", "--out", "cache", "--shape", "24x24x24"]
    runs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in "ab"]
    outcomes = [(run.wait(timeout=300), run.stderr.read().decode()) for run in runs if run.stderr]
    alone = run_preprocess(manifest, tmp_path / "alone", CONFIG)

    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert alone.ok and set(_indexed(tmp_path / "cache")) == set(NAMES)
    for name, entry in _indexed(tmp_path / "cache").items():
        verify_entry(tmp_path / "cache", entry)
        assert entry["sha256"] == _indexed(tmp_path / "alone")[name]["sha256"]
    assert not any(name.endswith(".tmp") for name in _exam_files(tmp_path / "cache"))
