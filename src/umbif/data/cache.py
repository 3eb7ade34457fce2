"""The exam cache: preprocess every exam of a manifest once, then load it in well under a millisecond.

Layout of a cache folder (nnU-Net style: a plan on disk, one entry per exam)::

    plan.json                    preprocessing config, its fingerprint, versions (the "plan")
    exams/<key>.image.npy        float16 [P, X, Y, Z], the P present sequences in canonical order
    exams/<key>.masks.npy        uint8 [2, X, Y, Z]: brain mask, tumour segmentation labels
    exams/<key>.json             the entry: exam id, sequences, affine, checksums, fingerprints
    exams/<key>.failed.json      why an exam could not be preprocessed (one per quarantined exam)
    index.json                   all valid entries, rebuilt at the end of every run
    quarantine.csv               exam, file and reason for every quarantined exam

Every file is written atomically and the ``.json`` entry is written last, so an exam counts as
cached only when all of it is on disk: a killed run loses at most the exams in flight, and a rerun
skips everything whose entry fingerprint still matches (same config, same input files) and
rebuilds the rest. Shards (``--shard i/n``) touch disjoint exams, so cluster array jobs can share
one cache folder; each rebuilds the index from all entries when it ends.

``.npy`` is used because it memory-maps with no decompression and no extra dependency.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data.manifest import Exam, Manifest, PathEscapeError, Problem, validate
from umbif.data.preprocess import PREPROCESS_VERSION, preprocess_exam
from umbif.provenance import provenance
from umbif.utils import atomic_write, remove_stale_temps, safe_name, write_text_atomic

EXAMS_DIR = "exams"


@dataclass(frozen=True)
class Shard:
    """Exam subset ``index`` of ``count`` (0-based), chosen by a stable hash of the exam id."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``"i/n"`` (0 <= i < n)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"shard {text!r} must look like i/n, e.g. 0/4") from None
        if not 0 <= index < count:
            raise ValueError(f"shard {text!r}: need 0 <= i < n")
        return cls(index, count)

    def owns(self, exam_id: str) -> bool:
        digest = hashlib.sha256(exam_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


@dataclass
class Failure:
    exam_id: str
    file: str  # the offending file, or "" when the exam as a whole is wrong
    reason: str


@dataclass
class RunReport:
    """What a preprocessing run did; ``ok`` is True only when no exam failed."""

    done: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    cache_dir: Path = Path()

    @property
    def ok(self) -> bool:
        return not self.failures


def plan_fingerprint(config: PreprocessConfig) -> str:
    return hashlib.sha256(f"{PREPROCESS_VERSION}:{config.fingerprint()}".encode()).hexdigest()[:16]


def exam_fingerprint(exam: Exam, plan: str) -> str:
    """Changes when the plan or any input file (path, size, modification time) changes."""
    parts = [plan]
    files = {**exam.sequences, "brain_mask": exam.brain_mask, "seg": exam.seg}
    for name, path in sorted(files.items()):
        if path is None:
            continue
        try:
            stat = path.stat()
            parts.append(f"{name}={path}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{name}={path}:missing")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def entry_paths(cache_dir: Path, exam_id: str) -> dict[str, Path]:
    key = safe_name(exam_id)
    base = cache_dir / EXAMS_DIR
    return {
        "image": base / f"{key}.image.npy",
        "masks": base / f"{key}.masks.npy",
        "entry": base / f"{key}.json",
        "failed": base / f"{key}.failed.json",
    }


def _save_npy(path: Path, array: np.ndarray) -> str:
    """Write an array as .npy atomically; returns the sha256 of the bytes written."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest()


def _failure_file(message: str, exam: Exam) -> str:
    """The exam file a failure message names, if any (messages start with the path)."""
    for path in [*exam.sequences.values(), exam.brain_mask, exam.seg]:
        if path is not None and str(path) in message:
            return str(path)
    return ""


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def process_one(exam: Exam, cache_dir: Path, config: PreprocessConfig, fingerprint: str) -> dict[str, Any]:
    """Preprocess one exam and write its cache entry; on failure write its quarantine record.

    Runs in a worker process. Returns ``{"exam_id", "ok", "file", "reason"}``.
    """
    paths = entry_paths(cache_dir, exam.exam_id)
    for path in paths.values():
        remove_stale_temps(path)
    try:
        result = preprocess_exam(exam, config)
    except Exception as err:  # any failure quarantines this exam and the run goes on
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        if not isinstance(err, ValueError | OSError):
            reason += " | " + traceback.format_exc(limit=3).replace("\n", " ")
        record = {"exam_id": exam.exam_id, "file": _failure_file(str(err), exam), "reason": reason}
        _remove([paths["entry"], paths["image"], paths["masks"]])
        write_text_atomic(paths["failed"], json.dumps(record, indent=1) + "\n")
        return {"ok": False, **record}
    entry = {
        "exam_id": exam.exam_id,
        "sequences": list(result.sequences),
        "shape": list(result.image.shape[1:]),
        "spacing": list(config.spacing),
        "affine": result.affine.tolist(),
        "has_seg": result.has_seg,
        "mask_source": result.mask_source,
        "brain_clipped": round(result.brain_clipped, 6),
        "input_stats": result.stats,
        "plan_fingerprint": plan_fingerprint(config),
        "fingerprint": fingerprint,
        "files": {"image": paths["image"].name, "masks": paths["masks"].name},
        "sha256": {
            "image": _save_npy(paths["image"], result.image.astype(np.float16)),
            "masks": _save_npy(paths["masks"], result.masks),
        },
    }
    write_text_atomic(paths["entry"], json.dumps(entry, indent=1) + "\n")
    paths["failed"].unlink(missing_ok=True)
    return {"ok": True, "exam_id": exam.exam_id, "file": "", "reason": ""}


def _is_current(paths: dict[str, Path], fingerprint: str) -> bool:
    try:
        entry = json.loads(paths["entry"].read_text())
    except (OSError, ValueError):
        return False
    return entry.get("fingerprint") == fingerprint and paths["image"].is_file() and paths["masks"].is_file()


def _init_worker() -> None:
    """One thread per worker: the pool is the parallelism, SimpleITK threads would oversubscribe."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def write_plan(cache_dir: Path, config: PreprocessConfig) -> None:
    plan = {
        "plan_fingerprint": plan_fingerprint(config),
        "preprocess_version": PREPROCESS_VERSION,
        "sequences": list(SEQUENCES),
        "preprocess": config.to_dict(),
        "provenance": provenance(),
    }
    write_text_atomic(cache_dir / "plan.json", json.dumps(plan, indent=2) + "\n")


def run_preprocess(
    manifest: Manifest,
    cache_dir: str | Path,
    config: PreprocessConfig | None = None,
    workers: int = 1,
    shard: Shard = Shard(),
    on_progress: Callable[[int, int], None] | None = None,
) -> RunReport:
    """Preprocess every exam of the manifest (or of one shard) into ``cache_dir``.

    Exams with errors in the manifest (missing file, path outside the root, no sequence) and
    exams whose files cannot be preprocessed are quarantined; the others are cached. Exams already
    cached with the same fingerprint are skipped.

    Args:
        manifest: the exams.
        cache_dir: the cache folder (created if missing).
        config: preprocessing settings; their fingerprint decides what is rebuilt.
        workers: processes; 1 runs in this process.
        shard: which subset of exams this run owns (for cluster array jobs).
        on_progress: called as ``on_progress(finished, total)`` after each exam.

    Returns:
        A :class:`RunReport`; the index and quarantine files are rewritten before returning.
    """
    config = config or PreprocessConfig()
    cache_dir = Path(cache_dir)
    (cache_dir / EXAMS_DIR).mkdir(parents=True, exist_ok=True)
    write_plan(cache_dir, config)
    plan = plan_fingerprint(config)
    report = RunReport(cache_dir=cache_dir)

    row_errors: dict[int, list[Problem]] = {}
    for problem in validate(manifest):
        if problem.severity == "error" and problem.row is not None:
            row_errors.setdefault(problem.row - 1, []).append(problem)
    todo: list[tuple[Exam, str]] = []
    seen: set[str] = set()
    for index in range(len(manifest)):
        exam_id = manifest.table.at[index, "exam_id"]
        if not exam_id or exam_id in seen or not shard.owns(exam_id):
            continue  # empty/duplicate ids are quarantined through row_errors of the first row only
        seen.add(exam_id)
        if index in row_errors:
            reason = "; ".join(f"{p.column or 'row'}: {p.message}" for p in row_errors[index])
            _quarantine_row(cache_dir, exam_id, reason, report)
            continue
        try:
            exam = manifest.exam(index)
        except PathEscapeError as err:  # already caught by validate; kept for API users
            _quarantine_row(cache_dir, exam_id, str(err), report)
            continue
        fingerprint = exam_fingerprint(exam, plan)
        if _is_current(entry_paths(cache_dir, exam_id), fingerprint):
            report.skipped += 1
            continue
        todo.append((exam, fingerprint))

    total, finished = len(todo), 0
    try:
        if workers <= 1:
            for exam, fingerprint in todo:
                _record(process_one(exam, cache_dir, config, fingerprint), report)
                finished += 1
                if on_progress:
                    on_progress(finished, total)
        elif todo:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
                futures = [pool.submit(process_one, exam, cache_dir, config, fp) for exam, fp in todo]
                for future in as_completed(futures):
                    _record(future.result(), report)
                    finished += 1
                    if on_progress:
                        on_progress(finished, total)
    finally:
        build_index(cache_dir)
    return report


def _record(result: dict[str, Any], report: RunReport) -> None:
    if result["ok"]:
        report.done += 1
    else:
        report.failures.append(Failure(result["exam_id"], result["file"], result["reason"]))


def _quarantine_row(cache_dir: Path, exam_id: str, reason: str, report: RunReport) -> None:
    paths = entry_paths(cache_dir, exam_id)
    record = {"exam_id": exam_id, "file": "", "reason": f"manifest: {reason}"}
    _remove([paths["entry"], paths["image"], paths["masks"]])
    write_text_atomic(paths["failed"], json.dumps(record, indent=1) + "\n")
    report.failures.append(Failure(**record))


def build_index(cache_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``index.json`` and ``quarantine.csv`` from the per-exam files.

    Only entries made with the current plan (``plan.json``) enter the index.
    """
    cache_dir = Path(cache_dir)
    plan = read_plan(cache_dir)["plan_fingerprint"]
    entries, failures = [], []
    for path in sorted((cache_dir / EXAMS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file being replaced right now by another shard; its writer re-indexes
        if path.name.endswith(".failed.json"):
            failures.append(record)
        elif record.get("plan_fingerprint") == plan:
            entries.append(record)
    index = {"plan_fingerprint": plan, "sequences": list(SEQUENCES), "exams": entries}
    write_text_atomic(cache_dir / "index.json", json.dumps(index) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["exam_id", "file", "reason"])
    writer.writeheader()
    writer.writerows(sorted(failures, key=lambda r: r["exam_id"]))
    write_text_atomic(cache_dir / "quarantine.csv", buffer.getvalue())
    return index


def _read_json(cache_dir: str | Path, name: str) -> dict[str, Any]:
    path = Path(cache_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `umbif preprocess MANIFEST --out {cache_dir}` first")
    return json.loads(path.read_text())


def read_index(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``index.json``: the plan fingerprint and one entry per cached exam."""
    return _read_json(cache_dir, "index.json")


def read_plan(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``plan.json``: ``plan_fingerprint``, ``preprocess`` (the PreprocessConfig), versions."""
    return _read_json(cache_dir, "plan.json")


class Cache:
    """A cache written by ``umbif preprocess``, for reading: its plan, grid, exams and arrays.

    Everything outside ``umbif.data`` reads a cache through this object, or through
    :class:`umbif.data.datasets.CacheDataset` (which takes one); nothing else knows the file layout.
    The index is read once, when the object is made: a snapshot of what was cached then.

    Args:
        path: the cache folder.

    Raises:
        FileNotFoundError: no ``index.json`` or ``plan.json`` (the message says to run ``umbif preprocess``).

    Example:
        >>> cache = Cache("cache/")
        >>> cache.grid, len(cache.exam_ids), cache.fingerprint
        ((96, 96, 96), 120, '3f2a9c0d1b7e4a55')
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.plan: dict[str, Any] = read_plan(self.path)
        index = read_index(self.path)
        self.entries: dict[str, dict[str, Any]] = {e["exam_id"]: e for e in index["exams"]}

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
        (uint8 ``[2, X, Y, Z]``: brain mask, tumour labels) array of a cached exam."""
        name = self.entry(exam_id)["files"][kind]
        return np.load(self.path / EXAMS_DIR / name, mmap_mode="r", allow_pickle=False)

    def verify(self, exam_id: str) -> None:
        """Check an exam's files against their checksums (:func:`verify_entry`)."""
        verify_entry(self.path, self.entry(exam_id))


def verify_entry(cache_dir: str | Path, entry: dict[str, Any]) -> None:
    """Check an entry's files against the checksums in the index.

    Raises:
        ValueError: a file is missing or its content changed since it was written.
    """
    base = Path(cache_dir) / EXAMS_DIR
    for kind, name in entry["files"].items():
        path = base / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if digest != entry["sha256"][kind]:
            raise ValueError(
                f"{path}: checksum mismatch for exam {entry['exam_id']} ({digest[:12]} != "
                f"{entry['sha256'][kind][:12]}); rerun `umbif preprocess` to rebuild it"
            )


def cache_bytes(cache_dir: str | Path) -> int:
    """Total size of the cached exam arrays."""
    return sum(f.stat().st_size for f in (Path(cache_dir) / EXAMS_DIR).glob("*.npy"))


def describe(cache_dir: str | Path, verify: bool = False) -> dict[str, Any]:
    """What a cache holds, for ``umbif cache info``: plan settings, exams cached and quarantined,
    size; with ``verify``, the exams whose files no longer match their checksums."""
    cache_dir = Path(cache_dir)
    index = read_index(cache_dir)
    plan = read_plan(cache_dir)
    quarantine = cache_dir / "quarantine.csv"
    failed = list(csv.DictReader(quarantine.open())) if quarantine.is_file() else []
    corrupt = []
    if verify:
        for entry in index["exams"]:
            try:
                verify_entry(cache_dir, entry)
            except ValueError as err:
                corrupt.append(str(err))
    n = len(index["exams"])
    size = cache_bytes(cache_dir)
    return {
        "exams": n,
        "quarantined": len(failed),
        "bytes": size,
        "bytes_per_exam": size // n if n else 0,
        "plan_fingerprint": index["plan_fingerprint"],
        "preprocess": plan["preprocess"],
        "sequence_counts": {s: sum(s in e["sequences"] for e in index["exams"]) for s in SEQUENCES},
        "with_seg": sum(bool(e["has_seg"]) for e in index["exams"]),
        "corrupt": corrupt,
    }


__all__ = [
    "Cache",
    "Failure",
    "RunReport",
    "Shard",
    "build_index",
    "cache_bytes",
    "describe",
    "read_index",
    "run_preprocess",
    "verify_entry",
]
