"""Sharded preprocessing and the one merge point (issue 15): shards finishing at once lose no exam, a shard
never writes the index, `umbif cache index` is idempotent and names missing shards, readers warn when the
index and the entries on disk disagree, a shard checks only its own files, and `cache info --verify
--workers N` finds what one thread finds."""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import random
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from umbif import SEQUENCES
from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.data import cache
from umbif.data.cache import (
    Cache,
    CacheError,
    CacheIndexWarning,
    Shard,
    describe,
    merge_index,
    read_index,
    run_preprocess,
)
from umbif.data.datasets import CacheDataset
from umbif.data.manifest import Manifest
from umbif.data.preprocess import Preprocessed

CONFIG = PreprocessConfig(shape=(8, 8, 8), spacing=(2.0, 2.0, 2.0))
ENV = {"COLUMNS": "250"}


def _fake_preprocess(exam, config: PreprocessConfig) -> Preprocessed:
    """A stand-in for preprocess_exam: tiny arrays that differ per exam, after a short random pause so shards
    finish in a different order each time. The index, parts and merge are what these tests are about."""
    time.sleep(random.uniform(0, 0.01))
    seed = sum(exam.exam_id.encode())
    return Preprocessed(
        image=np.full((len(SEQUENCES), 4, 4, 4), seed % 7, np.float32),
        sequences=SEQUENCES,
        masks=np.zeros((2, 4, 4, 4), np.uint8),
        affine=np.eye(4),
        has_seg=False,
        mask_source="auto",
        brain_clipped=0.0,
    )


@pytest.fixture(autouse=True)
def fast_preprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "preprocess_exam", _fake_preprocess)


def _ids_per_shard(count: int, per_shard: int, prefix: str) -> list[str]:
    """Exam ids such that each of ``count`` shards owns ``per_shard`` of them."""
    owned: dict[int, list[str]] = {i: [] for i in range(count)}
    number = 0
    while min(len(ids) for ids in owned.values()) < per_shard:
        exam_id = f"{prefix}{number}"
        number += 1
        shard = next(i for i in range(count) if Shard(i, count).owns(exam_id))
        if len(owned[shard]) < per_shard:
            owned[shard].append(exam_id)
    return sorted(e for ids in owned.values() for e in ids)


def _manifest(root: Path, exam_ids: list[str]) -> Manifest:
    """A manifest of ``exam_ids`` whose files exist (empty: the fake preprocessing reads none)."""
    rows = []
    for exam_id in exam_ids:
        folder = root / "data" / exam_id
        folder.mkdir(parents=True, exist_ok=True)
        for sequence in SEQUENCES:
            if not (folder / f"{sequence}.nii.gz").exists():  # an unchanged file keeps its exam cached
                (folder / f"{sequence}.nii.gz").touch()
        rows.append(
            {"exam_id": exam_id, "patient_id": f"p-{exam_id}", "site": "s"}
            | {s: f"data/{exam_id}/{s}.nii.gz" for s in SEQUENCES}
        )
    return Manifest(pd.DataFrame(rows), root)


def _indexed(cache_dir: Path) -> set[str]:
    return {e["exam_id"] for e in read_index(cache_dir)["exams"]}


def _invoke(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result, " ".join((result.stdout + result.stderr).split())


# ------------------------------------------------------------------------------------------ concurrency
def _run_shard(manifest: Manifest, out: Path, shard: Shard, start: float) -> None:
    time.sleep(max(0.0, start - time.time()))  # every shard starts at the same instant
    run_preprocess(manifest, out, CONFIG, shard=shard)


def test_shards_finishing_at_once_lose_no_exam(tmp_path: Path) -> None:
    """The measured bug: shards finishing at once into one cache lost exams from the index, exiting 0. Now
    shards write their own parts, and the one merge after them indexes every exam. Five rounds, each adding
    8 new exams (2 per shard) to a cache that also holds 2000 entries of an older plan (a slower index
    rebuild: in such rounds the code before issue 15 lost exams 8 times in 20)."""
    out, shards = tmp_path / "cache", 4
    (out / "exams").mkdir(parents=True)
    for number in range(2000):
        (out / "exams" / f"old{number}.json").write_text(
            json.dumps({"exam_id": f"old{number}", "plan_fingerprint": "x"})
        )
    context = multiprocessing.get_context("fork")  # the fake preprocessing is inherited; no thread pools to copy
    exam_ids: list[str] = []
    for round_ in range(5):
        exam_ids += _ids_per_shard(shards, 2, prefix=f"r{round_}-")
        manifest = _manifest(tmp_path, exam_ids)
        index_before = (out / "index.json").read_bytes() if (out / "index.json").exists() else None
        start = time.time() + 0.2
        processes = [
            context.Process(target=_run_shard, args=(manifest, out, Shard(i, shards), start)) for i in range(shards)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)

        assert [p.exitcode for p in processes] == [0] * shards
        index_after = (out / "index.json").read_bytes() if (out / "index.json").exists() else None
        assert index_after == index_before  # no shard wrote it (none at all in the first round)
        report = merge_index(out)
        assert (report.exams, report.parts, report.missing_shards, report.other_plan) == (
            len(exam_ids),
            shards,
            [],
            2000,
        )
        assert _indexed(out) == set(exam_ids)  # lost = 0
        parts = [json.loads((out / "index.d" / f"shard-{i}-of-{shards}.json").read_text()) for i in range(shards)]
        assert sorted(e for part in parts for e in part["exams"]) == exam_ids
        assert sum(part["done"] for part in parts) == 2 * shards  # each round preprocessed only its new exams
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(Cache(out)) == len(exam_ids)


def test_merges_run_one_at_a_time(tmp_path: Path) -> None:
    """A merge waits for the lock another merge holds, so the index written last comes from the latest listing."""
    out = tmp_path / "cache"
    run_preprocess(_manifest(tmp_path, ["a", "b"]), out, CONFIG)
    with open(out / "index.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        merging = threading.Thread(target=merge_index, args=(out,))
        merging.start()
        merging.join(timeout=0.5)
        assert merging.is_alive()  # waiting for the lock
    merging.join(timeout=10)
    assert not merging.is_alive()


# ------------------------------------------------------------------------------------------ the merge
def test_merge_is_idempotent(tmp_path: Path) -> None:
    """Merging twice without a change on disk writes the same bytes (index and quarantine list)."""
    exam_ids = _ids_per_shard(2, 2, prefix="e")
    manifest = _manifest(tmp_path, exam_ids)
    manifest.table.loc[0, "t1"] = "data/none.nii.gz"  # one quarantined exam
    out = tmp_path / "cache"
    for i in range(2):
        run_preprocess(manifest, out, CONFIG, shard=Shard(i, 2))

    first = merge_index(out)
    written = {name: (out / name).read_bytes() for name in ("index.json", "quarantine.csv")}
    second = merge_index(out)

    assert first == second
    assert (first.exams, first.quarantined, first.parts) == (len(exam_ids) - 1, 1, 2)
    assert {name: (out / name).read_bytes() for name in written} == written


def test_a_shard_never_writes_the_index(tmp_path: Path) -> None:
    """A shard leaves an existing index alone; readers then warn until `cache index` merges its part."""
    out = tmp_path / "cache"
    run_preprocess(_manifest(tmp_path, ["a", "b"]), out, CONFIG)
    before = ((out / "index.json").read_bytes(), (out / "index.json").stat().st_mtime_ns)
    more = _ids_per_shard(2, 1, prefix="n")
    manifest = _manifest(tmp_path, ["a", "b", *more])

    report = run_preprocess(manifest, out, CONFIG, shard=Shard(0, 2))

    assert ((out / "index.json").read_bytes(), (out / "index.json").stat().st_mtime_ns) == before
    assert report.part == out / "index.d" / "shard-0-of-2.json"
    with pytest.warns(CacheIndexWarning, match="shard parts were written after the merge"):
        Cache(out)


def test_merge_names_the_shards_that_wrote_no_part(tmp_path: Path) -> None:
    """A shard still running, failed or killed has no part: the merge names it (exit 1), indexes what is cached,
    and readers warn until a merge has every shard."""
    exam_ids = _ids_per_shard(3, 1, prefix="e")
    manifest = _manifest(tmp_path, exam_ids)
    out = tmp_path / "cache"
    for i in (0, 1):
        run_preprocess(manifest, out, CONFIG, shard=Shard(i, 3))

    result, text = _invoke("cache", "index", out)

    assert result.exit_code == 1
    assert (
        "2 exams indexed, 0 quarantined, 2 shard parts" in text
        and "no part from shards 2/3 (still running, failed" in text
    )
    assert "rerun them with the same --shard" in text and f"`umbif cache index {out}` again" in text
    assert len(_indexed(out)) == 2
    with pytest.warns(CacheIndexWarning, match="merged without shards 2/3"):
        Cache(out)

    run_preprocess(manifest, out, CONFIG, shard=Shard(2, 3))
    result, text = _invoke("cache", "index", out)

    assert result.exit_code == 0 and f"done: 3 exams indexed, 0 quarantined, 3 shard parts -> {out}" in text
    assert _indexed(out) == set(exam_ids)


def test_merge_names_entries_it_cannot_read(tmp_path: Path) -> None:
    """A damaged entry is left out of the index and named (exit 1); the other exams are indexed."""
    out = tmp_path / "cache"
    run_preprocess(_manifest(tmp_path, ["a", "b", "c"]), out, CONFIG)
    (out / "exams" / "b.json").write_text('{"exam_id": "b", "shape": [8, ')

    result, text = _invoke("cache", "index", out)

    assert result.exit_code == 1 and "unreadable b.json" in text
    assert "2 exams indexed" in text and "1 exam entries cannot be read: rerun `umbif preprocess`" in text
    assert _indexed(out) == {"a", "c"}


def test_an_interrupted_shard_leaves_no_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard's part is written when it ends, or not at all: a rerun that dies removes the old one."""
    exam_ids = _ids_per_shard(2, 2, prefix="e")
    manifest = _manifest(tmp_path, exam_ids)
    out = tmp_path / "cache"
    run_preprocess(manifest, out, CONFIG, shard=Shard(0, 2))
    part = out / "index.d" / "shard-0-of-2.json"
    assert part.is_file()
    mine = next(e for e in exam_ids if Shard(0, 2).owns(e))
    (tmp_path / "data" / mine / "t1.nii.gz").write_bytes(b"changed")  # a rebuild is due

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "process_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(manifest, out, CONFIG, shard=Shard(0, 2))

    assert not part.exists() and not (out / "index.json").exists()


def test_a_new_layout_or_a_run_without_shards_supersedes_old_parts(tmp_path: Path) -> None:
    exam_ids = _ids_per_shard(4, 1, prefix="e")
    manifest = _manifest(tmp_path, exam_ids)
    out = tmp_path / "cache"
    run_preprocess(manifest, out, CONFIG, shard=Shard(0, 4))

    run_preprocess(manifest, out, CONFIG, shard=Shard(1, 2))
    assert sorted(p.name for p in (out / "index.d").iterdir()) == ["shard-1-of-2.json"]

    report = run_preprocess(manifest, out, CONFIG)  # a run without shards merges itself
    assert report.part is None and not list((out / "index.d").iterdir())
    assert _indexed(out) == set(exam_ids)


# ------------------------------------------------------------------------------------------ readers
def test_readers_warn_when_disk_and_index_disagree_and_stop_after_the_merge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "cache"
    manifest = _manifest(tmp_path, ["a", "b", "c"])
    run_preprocess(manifest, out, CONFIG)
    entry = json.loads((out / "exams" / "c.json").read_text())
    (out / "exams" / "d.json").write_text(json.dumps(entry | {"exam_id": "d"}))  # e.g. a shard after the merge

    with caplog.at_level(logging.WARNING), pytest.warns(CacheIndexWarning) as caught:
        reader = Cache(out)

    message = str(caught[0].message)
    assert "4 exam entries are on disk, the index was merged from 3" in message
    assert f"Run `umbif cache index {out}`" in message and "(3 exams)" in message
    assert message in caplog.text and reader.disagreement == message
    with pytest.raises(CacheError, match="4 exam entries are on disk"):
        Cache(out, strict=True)
    with pytest.raises(CacheError, match="4 exam entries are on disk"):
        CacheDataset(out, strict=True)
    (out / "exams" / "c.json").unlink()  # the same count, other files
    with pytest.warns(CacheIndexWarning, match="the 3 exam entries on disk are not the ones the index was merged"):
        Cache(out)

    merge_index(out)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = Cache(out, strict=True)
    assert set(reader.exam_ids) == {"a", "b", "d"} and reader.disagreement is None


def test_a_cache_of_parts_only_says_to_merge(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    run_preprocess(_manifest(tmp_path, ["a", "b"]), out, CONFIG, shard=Shard(0, 2))

    with pytest.raises(FileNotFoundError, match=r"shards have written their parts .* run `umbif cache index"):
        Cache(out)


# ------------------------------------------------------------------------------------------ shard-local work
def test_a_shard_checks_only_its_own_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation and fingerprints of a shard stat the files of its own exams only (each shard stat-ed every
    path of the manifest, 9 times)."""
    exam_ids = _ids_per_shard(4, 2, prefix="e")
    manifest = _manifest(tmp_path, exam_ids)
    mine = {e for e in exam_ids if Shard(0, 4).owns(e)}
    touched: list[str] = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def recording(path: object, *args: object, real=real, **kwargs: object):
            touched.append(os.fspath(path))  # type: ignore[arg-type]
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, recording)

    report = run_preprocess(manifest, tmp_path / "cache", CONFIG, shard=Shard(0, 4))

    data = str(tmp_path / "data") + os.sep
    exams_touched = {p[len(data) :].split(os.sep)[0] for p in touched if p.startswith(data)}
    assert report.ok and set(report.cached) == mine
    assert exams_touched == mine


# ------------------------------------------------------------------------------------------ verify
def test_verify_with_workers_finds_what_one_thread_finds(tmp_path: Path) -> None:
    exam_ids = [f"e{n:02d}" for n in range(12)]
    out = tmp_path / "cache"
    run_preprocess(_manifest(tmp_path, exam_ids), out, CONFIG)
    (out / "exams" / "e03.image.npy").write_bytes(b"")
    (out / "exams" / "e07.masks.npy").unlink()
    damaged = out / "exams" / "e10.image.npy"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x01")

    serial = describe(out, verify=True)["corrupt"]
    seen: list[tuple[int, int]] = []
    parallel = describe(out, verify=True, workers=2, on_progress=lambda done, total: seen.append((done, total)))
    result, text = _invoke("cache", "info", out, "--verify", "--workers", "2")

    assert len(serial) == 3 and parallel["corrupt"] == serial
    assert [exam in message for exam, message in zip(("e03", "e07", "e10"), serial, strict=True)] == [True] * 3
    assert seen[-1] == (len(exam_ids), len(exam_ids))
    assert result.exit_code == 1 and "3 exams fail their checksum" in text and "e07.masks.npy" in text


# ------------------------------------------------------------------------------------------ command line
def test_preprocess_shard_command_says_to_merge(tmp_path: Path) -> None:
    exam_ids = _ids_per_shard(2, 1, prefix="e")
    _manifest(tmp_path, exam_ids).write(tmp_path / "manifest.csv")
    out = tmp_path / "cache"

    result, text = _invoke("preprocess", tmp_path / "manifest.csv", "--out", out, "--shard", "1/2", "--shape", "8x8x8")

    assert result.exit_code == 0, text
    assert f"shard 1/2 wrote {out / 'index.d' / 'shard-1-of-2.json'}" in text
    assert f"once every shard has finished, run `umbif cache index {out}`" in text
    assert "done: 1 preprocessed, 0 already cached, 0 failed" in text
    result, text = _invoke("cache", "info", out)
    assert result.exit_code == 1 and "run `umbif cache index" in text
