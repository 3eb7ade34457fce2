"""The exam cache on disk: its files, the index (merged from the entries, and checked against them), the
checks every reader makes, and the reader (:class:`Cache`).

Layout of a cache folder (nnU-Net style: a plan on disk, one entry per exam)::

    plan.json                    preprocessing config, its fingerprint, versions (the "plan")
    exams/<key>.image.npy        float16 [P, X, Y, Z], the P present sequences in canonical order
    exams/<key>.masks.npy        uint8 [2, X, Y, Z]: brain mask, tumour segmentation labels
    exams/<key>.json             the entry: exam id, sequences, affine, sizes, checksums, fingerprints
    exams/<key>.failed.json      why an exam could not be preprocessed (one per quarantined exam)
    index.d/shard-<i>-of-<n>.json  what shard i/n cached and quarantined (written when the shard ends)
    index.json                   all valid entries, merged from exams/ by `umbif cache index` (or by a
                                 run without shards), with a record of what was on disk then
    index.lock                   merges take it one at a time
    quarantine.csv               exam, file and reason for every quarantined exam

``<key>`` is :func:`umbif.utils.safe_name` of the exam id (an over-long id is shortened with a hash).
The entry files are the source of truth; the index is their merge (:func:`merge_index`, one at a time,
run once after all shards). Everything read back is checked:
``plan.json`` and ``index.json`` must be the mappings umbif wrote, a file name from the index must be a
plain name inside ``exams/``, an array must have the size and checksum of its entry, and the index must
have been merged from the entry files on disk now (:func:`index_disagreement`). A damaged file is a
:class:`CacheError` that names the file (and the exam) and says to rerun ``umbif preprocess``, which
rebuilds what fails. The writer is :mod:`umbif.data.cache`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from umbif import SEQUENCES
from umbif.utils import csv_cell, safe_name, sha256_file, write_json, write_text_atomic

EXAMS_DIR = "exams"
PARTS_DIR = "index.d"
PART = re.compile(r"shard-(\d+)-of-(\d+)\.json")
KINDS: dict[str, tuple[str, int]] = {"image": ("float16", 0), "masks": ("uint8", 2)}  # dtype, channels (0: P)
REBUILD = "the cache file is damaged: rerun `umbif preprocess` on the same manifest to rebuild it"
MAX_SHARDS = 100_000  # more shards than any cluster array job runs
log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class CacheError(ValueError):
    """A cache file that cannot be used (damaged, truncated, not what the index says); the message names
    the file, the exam where there is one, and says to rerun ``umbif preprocess``."""


class CacheIndexWarning(UserWarning):
    """The cache's index was not merged from the exam entries on disk now (a shard finished after the merge,
    or the merge ran without every shard): a reader would use other exams than the cache holds."""


def entry_paths(cache_dir: Path, exam_id: str) -> dict[str, Path]:
    """The files of one exam: ``image``, ``masks``, ``entry`` and ``failed``."""
    key = safe_name(exam_id)
    base = cache_dir / EXAMS_DIR
    return {
        "image": base / f"{key}.image.npy",
        "masks": base / f"{key}.masks.npy",
        "entry": base / f"{key}.json",
        "failed": base / f"{key}.failed.json",
    }


def part_path(cache_dir: Path, index: int, count: int) -> Path:
    """The part file of shard ``index`` of ``count``: what that shard cached and quarantined."""
    return cache_dir / PARTS_DIR / f"shard-{index}-of-{count}.json"


def part_shard(name: str) -> tuple[int, int]:
    """``(i, n)`` of a part file name ``shard-<i>-of-<n>.json``."""
    match = PART.fullmatch(name)
    assert match, name  # callers pass names that part_stamps listed
    return int(match[1]), int(match[2])


def array_path(cache_dir: Path, entry: dict[str, Any], kind: str) -> Path:
    """The file of one array of an entry; a name from the index that is not a plain file name is refused."""
    name = entry.get("files", {}).get(kind) if isinstance(entry.get("files"), dict) else None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\0" in name:
        raise CacheError(
            f"exam {entry.get('exam_id')!r}: the index names {name!r} as its {kind} file, not a file name in "
            f"the cache; {REBUILD}"
        )
    return cache_dir / EXAMS_DIR / name


def exam_files(cache_dir: str | Path) -> tuple[list[str], list[str]]:
    """The names of the entry files and of the quarantine records in ``exams/``, sorted (one directory
    listing, no ``stat``: cheap at 100k files on a shared file system)."""
    entries, failed = [], []
    try:
        with os.scandir(Path(cache_dir) / EXAMS_DIR) as listing:
            for item in listing:
                if item.name.endswith(".failed.json"):
                    failed.append(item.name)
                elif item.name.endswith(".json"):
                    entries.append(item.name)
    except FileNotFoundError:
        pass
    return sorted(entries), sorted(failed)


def part_stamps(cache_dir: str | Path) -> dict[str, int]:
    """Each shard part in ``index.d/`` and its modification time (ns): a part rewritten changes its stamp."""
    stamps = {}
    try:
        with os.scandir(Path(cache_dir) / PARTS_DIR) as listing:
            for item in listing:
                if PART.fullmatch(item.name):
                    try:
                        stamps[item.name] = item.stat().st_mtime_ns
                    except FileNotFoundError:
                        continue  # removed while listed
    except FileNotFoundError:
        pass
    return dict(sorted(stamps.items()))


def disk_record(entry_names: Iterable[str], stamps: dict[str, int]) -> dict[str, Any]:
    """What the index records of the disk it was merged from: how many entry files, a digest of their
    names, and the stamps of the shard parts. :func:`index_disagreement` compares it with the disk."""
    names = list(entry_names)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return {"entry_files": len(names), "entry_digest": digest, "parts": stamps}


def index_disagreement(cache_dir: str | Path, index: dict[str, Any]) -> str | None:
    """Why ``index`` does not describe the exam entries on disk now, or None when it does.

    Compares the index's record of the disk (:func:`disk_record`) with one listing of ``exams/`` and of
    ``index.d/``, and reports shards that the merge went without. An index written before umbif recorded
    the disk is not checked.
    """
    recorded = index.get("disk")
    if not isinstance(recorded, dict):
        return None
    now = disk_record(exam_files(cache_dir)[0], part_stamps(cache_dir))
    found = []
    if now["entry_files"] != recorded.get("entry_files"):
        found.append(
            f"{now['entry_files']} exam entries are on disk, the index was merged from {recorded.get('entry_files')}"
        )
    elif now["entry_digest"] != recorded.get("entry_digest"):
        found.append(f"the {now['entry_files']} exam entries on disk are not the ones the index was merged from")
    old = recorded.get("parts") if isinstance(recorded.get("parts"), dict) else {}
    newer = [name for name, stamp in now["parts"].items() if old.get(name) != stamp]
    if newer:
        found.append(f"{len(newer)} shard parts were written after the merge ({_some(newer)})")
    missing = index.get("missing_shards")
    if isinstance(missing, list) and missing:
        found.append(f"the index was merged without shards {_some(missing)}")
    if not found:
        return None
    return (
        f"{cache_dir}: the index ({len(index['exams'])} exams) disagrees with the disk: {'; '.join(found)}. "
        f"Run `umbif cache index {cache_dir}` once every `umbif preprocess --shard` job has finished"
    )


def _some(names: list[str], shown: int = 4) -> str:
    """The first few of ``names``, for a message."""
    return ", ".join(map(str, names[:shown])) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _read_json(cache_dir: str | Path, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A cache's ``plan.json`` or ``index.json``, checked to be a mapping with ``keys``.

    Raises:
        FileNotFoundError: no such file (the message says which command writes it).
        CacheError: the file is damaged or not a cache file.
    """
    path = Path(cache_dir) / name
    if not path.is_file():
        if name == "index.json" and part_stamps(cache_dir):
            raise FileNotFoundError(
                f"{path} does not exist, but shards have written their parts to {Path(cache_dir) / PARTS_DIR}: "
                f"run `umbif cache index {cache_dir}` once every shard has finished"
            )
        raise FileNotFoundError(f"{path} does not exist; run `umbif preprocess MANIFEST --out {cache_dir}` first")
    rewrite = f"rerun `umbif preprocess MANIFEST --out {cache_dir}` to rewrite it"
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise CacheError(f"{path}: not readable JSON ({err}); {rewrite}") from None
    if not isinstance(document, dict) or any(key not in document for key in keys):
        raise CacheError(f"{path}: not a umbif cache file (expected keys {', '.join(keys)}); {rewrite}")
    return document


def read_index(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``index.json``: the plan fingerprint and one entry per cached exam."""
    index = _read_json(cache_dir, "index.json", ("plan_fingerprint", "exams"))
    exams = index["exams"]
    if not isinstance(exams, list) or not all(isinstance(e, dict) and isinstance(e.get("exam_id"), str) for e in exams):
        path = Path(cache_dir) / "index.json"
        raise CacheError(f"{path}: its exams are not cache entries; rerun `umbif preprocess` to rewrite it")
    return index


def read_plan(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``plan.json``: ``plan_fingerprint``, ``preprocess`` (the PreprocessConfig), versions."""
    return _read_json(cache_dir, "plan.json", ("plan_fingerprint", "preprocess"))


def verify_entry(cache_dir: str | Path, entry: dict[str, Any]) -> None:
    """Check an entry's files against the sizes (entries written since sizes are recorded) and checksums
    in the index.

    Raises:
        CacheError: a file is missing, or its size or content changed since it was written.
    """
    for kind in entry["files"]:
        path = array_path(Path(cache_dir), entry, kind)
        size = path.stat().st_size if path.is_file() else None
        expected_size = entry.get("bytes", {}).get(kind)
        if size is None or (expected_size is not None and size != expected_size):
            found = "missing" if size is None else f"{size} bytes, not {expected_size}"
            raise CacheError(f"{path}: exam {entry['exam_id']}: {found}; {REBUILD}")
        digest = sha256_file(path)
        if digest != entry["sha256"][kind]:
            raise CacheError(
                f"{path}: checksum mismatch for exam {entry['exam_id']} ({digest[:12]} != "
                f"{entry['sha256'][kind][:12]}); {REBUILD}"
            )


class Cache:
    """A cache written by ``umbif preprocess``, for reading: its plan, grid, exams and arrays.

    Everything outside ``umbif.data`` reads a cache through this object, or through
    :class:`umbif.data.datasets.CacheDataset` (which takes one); nothing else knows the file layout.
    The index is read once, when the object is made: a snapshot of what was cached then. Making it also
    lists ``exams/`` once (about 0.1 s at 50k exams) to check that the index was merged from the entries on
    disk now; when it was not (a shard finished after ``umbif cache index``, or the merge went without a
    shard), it warns loudly (a :class:`CacheIndexWarning` and a log record naming both counts and the
    command to run), or refuses with ``strict``.

    Args:
        path: the cache folder.
        strict: refuse an index that disagrees with the disk (a :class:`CacheError`) instead of warning.

    Raises:
        FileNotFoundError: no ``index.json`` or ``plan.json`` (the message says which command to run).
        CacheError: one of them is damaged, or (``strict``) the index disagrees with the disk.

    Example:
        >>> cache = Cache("cache/")
        >>> cache.grid, len(cache.exam_ids), cache.fingerprint
        ((96, 96, 96), 120, '3f2a9c0d1b7e4a55')
    """

    def __init__(self, path: str | Path, strict: bool = False):
        self.path = Path(path)
        self.plan: dict[str, Any] = read_plan(self.path)
        index = read_index(self.path)
        self.entries: dict[str, dict[str, Any]] = {e["exam_id"]: e for e in index["exams"]}
        self.disagreement: str | None = index_disagreement(self.path, index)  # None: index and disk agree
        if self.disagreement and strict:
            raise CacheError(self.disagreement)
        if self.disagreement:
            log.warning(self.disagreement)
            warnings.warn(self.disagreement, CacheIndexWarning, stacklevel=2)

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, {len(self.entries)} exams, plan {self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        """The preprocessing plan's fingerprint: changes whenever a setting that changes the output does."""
        return str(self.plan["plan_fingerprint"])

    @property
    def preprocess(self) -> dict[str, Any]:
        """The :class:`umbif.config.PreprocessConfig` the exams were made with, as a dictionary."""
        return dict(self.plan["preprocess"])

    @property
    def grid(self) -> tuple[int, int, int]:
        """The voxel grid of every cached exam (the plan's ``shape``)."""
        x, y, z = self.plan["preprocess"]["shape"]
        return int(x), int(y), int(z)

    @property
    def exam_ids(self) -> list[str]:
        """Every cached exam, in index order."""
        return list(self.entries)

    def __contains__(self, exam_id: object) -> bool:
        return exam_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def select(self, exam_ids: Iterable[str]) -> list[str]:
        """The exams of ``exam_ids`` that are cached, in the order given."""
        return [e for e in exam_ids if e in self.entries]

    def entry(self, exam_id: str) -> dict[str, Any]:
        """The index entry of one exam (sequences, affine, ``has_seg``, checksums); ``KeyError`` if not cached."""
        try:
            return self.entries[exam_id]
        except KeyError:
            raise KeyError(f"exam {exam_id!r} is not in the cache {self.path}") from None

    def load(self, exam_id: str, kind: str) -> np.ndarray:
        """The memory-mapped ``"image"`` (float16 ``[P, X, Y, Z]``, present sequences) or ``"masks"``
        (uint8 ``[2, X, Y, Z]``: brain mask, tumour labels) array of a cached exam.

        Raises:
            KeyError: the exam is not cached.
            CacheError: the file is missing, empty, truncated or not the array its entry describes; the
                message names the exam and the file and says to rerun ``umbif preprocess``.
        """
        entry = self.entry(exam_id)
        path = array_path(self.path, entry, kind)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise CacheError(f"exam {exam_id!r}: {path} cannot be read ({err or 'empty file'}); {REBUILD}") from None
        dtype, channels = KINDS[kind]
        expected = (channels or len(entry.get("sequences", ())), *entry.get("shape", ()))
        if array.dtype != np.dtype(dtype) or tuple(array.shape) != expected:
            raise CacheError(
                f"exam {exam_id!r}: {path} holds {array.dtype} {list(array.shape)}, its entry says {dtype} "
                f"{list(expected)}; {REBUILD}"
            )
        return array

    def verify(self, exam_id: str) -> None:
        """Check an exam's files against their checksums (:func:`verify_entry`)."""
        verify_entry(self.path, self.entry(exam_id))


@dataclass
class IndexReport:
    """What :func:`merge_index` found and wrote; ``ok`` when no shard is missing and every entry was read."""

    exams: int = 0  # entries made with the current plan: the index
    quarantined: int = 0  # quarantine records (quarantine.csv)
    other_plan: int = 0  # entry files made with another plan, left out
    unreadable: list[str] = field(default_factory=list)  # entry files that are not umbif entries, left out
    parts: int = 0  # shard parts of the current plan
    missing_shards: list[str] = field(default_factory=list)  # "i/n": a shard of a layout on disk without its part
    unlisted: int = 0  # indexed exams that no part lists (cached by an earlier run); counted when parts exist

    @property
    def ok(self) -> bool:
        return not self.missing_shards and not self.unreadable


def merge_index(
    cache_dir: str | Path, workers: int = 4, on_progress: Callable[[int, int], None] | None = None
) -> IndexReport:
    """Write ``index.json`` and ``quarantine.csv`` from the exam entries on disk: the one merge point of a
    sharded run (``umbif cache index``), and the last step of a run without shards.

    The entry files (``exams/*.json``, each written last for its exam) are the source of truth: every one
    made with the current plan enters the index, in file-name order, and every quarantine record enters
    ``quarantine.csv``. The shard parts (``index.d/``) say which shards finished: a shard of a layout on
    disk that wrote no part with this plan is named in ``missing_shards``, here and in the index (so readers
    warn). The index records the disk it was merged from (:func:`disk_record`), so a reader sees when it
    goes stale. Merges hold a lock and run one at a time, so the index written last comes from the latest
    listing. Merging twice without a change on disk writes the same bytes.

    Args:
        cache_dir: the cache folder.
        workers: threads reading entry files (a network file system answers many reads at once).
        on_progress: called as ``on_progress(read, total)`` while the files are read.

    Raises:
        FileNotFoundError: no ``plan.json``. CacheError: a damaged one. OSError: the index cannot be written.
    """
    cache_dir = Path(cache_dir)
    plan = read_plan(cache_dir)["plan_fingerprint"]
    exams = cache_dir / EXAMS_DIR
    with _merge_lock(cache_dir):
        stamps = part_stamps(cache_dir)
        names, failed_names = exam_files(cache_dir)
        records = _in_threads(_read_record, [exams / name for name in names + failed_names], workers, on_progress)
        report, entries = IndexReport(), []
        for name, record in zip(names, records, strict=False):
            if record is None or not isinstance(record.get("exam_id"), str):
                if (exams / name).exists():  # else removed since the listing (a quarantine): not damaged
                    report.unreadable.append(name)
            elif record.get("plan_fingerprint") == plan:
                entries.append(record)
            else:
                report.other_plan += 1
        failures = [record for record in records[len(names) :] if record is not None]
        listed = _read_parts(cache_dir, stamps, plan, report)
        report.exams, report.quarantined = len(entries), len(failures)
        report.unlisted = len({e["exam_id"] for e in entries} - listed) if stamps else 0
        index = {
            "plan_fingerprint": plan,
            "sequences": list(SEQUENCES),
            "exams": entries,
            "disk": disk_record(names, stamps),
            "missing_shards": report.missing_shards,
        }
        write_json(cache_dir / "index.json", index, indent=None)
        _write_quarantine(cache_dir, failures)
    return report


@contextlib.contextmanager
def _merge_lock(cache_dir: Path) -> Iterator[None]:
    """Hold ``index.lock`` while merging, so the index written last comes from the latest listing (where the
    file system has no ``flock``, merges go on unlocked, and a reader warns if an older listing won)."""
    with open(cache_dir / "index.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            log.warning("%s: cannot be locked (%s); merging without the lock", handle.name, err)
        yield


def _read_parts(cache_dir: Path, stamps: dict[str, int], plan: str, report: IndexReport) -> set[str]:
    """Count the shard parts made with ``plan``, name the shards of each layout on disk that wrote none, and
    return the exams the parts list."""
    finished, layouts, listed = set(), set(), set()
    for name in stamps:
        index, count = part_shard(name)
        if not index < count <= MAX_SHARDS:
            continue  # not a name umbif writes
        layouts.add(count)
        part = _read_record(cache_dir / PARTS_DIR / name)
        if part is not None and part.get("plan_fingerprint") == plan:
            finished.add((index, count))
            listed.update(e for e in part.get("exams", []) if isinstance(e, str))
    report.parts = len(finished)
    report.missing_shards = [f"{i}/{n}" for n in sorted(layouts) for i in range(n) if (i, n) not in finished]
    return listed


def _read_record(path: Path) -> dict[str, Any] | None:
    """A JSON mapping umbif wrote (entry, quarantine record, part), or None: gone, a folder, or damaged."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_quarantine(cache_dir: Path, failures: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    fields = ["exam_id", "file", "reason"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for record in sorted(failures, key=lambda r: str(r.get("exam_id", ""))):
        writer.writerow({k: csv_cell(str(record.get(k, ""))) for k in fields})  # no cell runs as a formula
    write_text_atomic(cache_dir / "quarantine.csv", buffer.getvalue())


def _in_threads(
    fn: Callable[[T], R], items: Sequence[T], workers: int, on_progress: Callable[[int, int], None] | None
) -> list[R]:
    """``[fn(item) for item in items]`` on ``workers`` threads (file reads and sha256 release the GIL), in
    order, in chunks (a future per item costs more than reading a small file); ``on_progress(done, total)``."""
    total = len(items)
    size = max(1, min(256, -(-total // (max(workers, 1) * 16))))
    chunks = [items[start : start + size] for start in range(0, total, size)]
    results: list[R] = []
    with ThreadPoolExecutor(max(1, min(workers, len(chunks)))) as pool:
        for chunk in pool.map(lambda part: [fn(item) for item in part], chunks):
            results.extend(chunk)
            if on_progress:
                on_progress(len(results), total)
    return results


def cache_bytes(cache_dir: str | Path) -> int:
    """Total size of the cached exam arrays."""
    return sum(f.stat().st_size for f in (Path(cache_dir) / EXAMS_DIR).glob("*.npy"))


def describe(
    cache_dir: str | Path,
    verify: bool = False,
    workers: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """What a cache holds, for ``umbif cache info``: plan settings, exams cached and quarantined, size,
    ``stale`` (why the index disagrees with the entries on disk, or None); with ``verify``, the exams whose
    files no longer match their size and checksum, checked on ``workers`` threads (the same findings in
    the same order as one thread), calling ``on_progress(checked, total)``."""
    cache_dir = Path(cache_dir)
    index = read_index(cache_dir)
    plan = read_plan(cache_dir)
    quarantine = cache_dir / "quarantine.csv"
    failed = []
    if quarantine.is_file():
        with quarantine.open(encoding="utf-8", errors="replace", newline="") as handle:
            failed = list(csv.DictReader(handle))
    corrupt = []
    if verify:
        found = _in_threads(lambda entry: _corruption(cache_dir, entry), index["exams"], workers, on_progress)
        corrupt = [message for message in found if message]
    n = len(index["exams"])
    size = cache_bytes(cache_dir)
    return {
        "exams": n,
        "quarantined": len(failed),
        "bytes": size,
        "bytes_per_exam": size // n if n else 0,
        "plan_fingerprint": index["plan_fingerprint"],
        "preprocess": plan["preprocess"],
        "sequence_counts": {s: sum(s in e.get("sequences", ()) for e in index["exams"]) for s in SEQUENCES},
        "with_seg": sum(bool(e.get("has_seg")) for e in index["exams"]),
        "corrupt": corrupt,
        "stale": index_disagreement(cache_dir, index),
    }


def _corruption(cache_dir: Path, entry: dict[str, Any]) -> str | None:
    """Why an entry's files fail :func:`verify_entry`, or None when they pass."""
    try:
        verify_entry(cache_dir, entry)
    except (CacheError, KeyError, TypeError, AttributeError) as err:
        return str(err) if isinstance(err, CacheError) else f"exam {entry['exam_id']}: bad entry"
    return None
