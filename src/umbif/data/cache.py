"""The exam cache: preprocess every exam of a manifest once, then load it in well under a millisecond.

The cache folder holds ``plan.json``, ``index.json``, ``quarantine.csv`` and one entry per exam under
``exams/`` (see :mod:`umbif.data.cache_layout`, nnU-Net style: a plan on disk, one entry per exam).
Every file is written atomically and the ``.json`` entry is written last, so an exam counts as
cached only when all of it is on disk: a killed run loses at most the exams in flight, and a rerun
skips everything whose entry fingerprint still matches (same config, same input files) and whose
arrays still have the size and checksum of the entry, and rebuilds the rest. A failure while
writing one exam quarantines that exam; a full disk stops the run with one message naming the
folder, and every exam finished before it stays cached.

Shards (``--shard i/n``, cluster array jobs) share one cache folder: each validates, fingerprints and
preprocesses only the exams it owns, and when it ends writes its own part (``index.d/``: what it cached
and quarantined), never the shared index. :func:`merge_index` (``umbif cache index``) is the one merge
point: run once after every shard, it writes the index from the entry files on disk (the source of
truth), one merge at a time, and names the shards that wrote no part. A run without shards merges
itself when it ends. Readers (:class:`Cache`) warn when the index and the entries on disk disagree.

``.npy`` is used because it memory-maps with no decompression and no extra dependency.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data.cache_layout import (
    EXAMS_DIR,
    MAX_SHARDS,
    PARTS_DIR,
    Cache,
    CacheError,
    CacheIndexWarning,
    IndexReport,
    cache_bytes,
    describe,
    entry_paths,
    merge_index,
    part_path,
    part_shard,
    part_stamps,
    read_index,
    read_plan,
    verify_entry,
)
from umbif.data.manifest import Exam, Manifest, ManifestError, PathError, Problem, validate
from umbif.data.preprocess import PREPROCESS_VERSION, preprocess_exam
from umbif.provenance import provenance
from umbif.utils import atomic_write, json_text, remove_stale_temps, write_json, write_text_atomic


class WorkerDied(RuntimeError):
    """A worker process of ``run_preprocess`` was killed (most often by the system, out of memory)."""


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
        if not 0 <= index < count <= MAX_SHARDS:
            raise ValueError(f"shard {text!r}: need 0 <= i < n <= {MAX_SHARDS}")
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
    """What a preprocessing run did; ``ok`` is True only when no exam failed. ``part`` is the shard's part
    file (None for a run without shards, which merges the index itself)."""

    done: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    cache_dir: Path = Path()
    cached: list[str] = field(default_factory=list)  # exams of this run now cached (done or skipped)
    part: Path | None = None

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


def _save_npy(path: Path, array: np.ndarray) -> tuple[str, int]:
    """Write an array as .npy atomically; returns the sha256 and the size of the bytes written."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest(), len(data)


def _disk_full(err: BaseException) -> bool:
    """A full disk, a full quota or a read-only file system stops the whole run (every exam would fail the
    same way); every other failure quarantines one exam."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _failure_file(message: str, exam: Exam) -> str:
    """The exam file a failure message names, if any (messages start with the path)."""
    for path in [*exam.sequences.values(), exam.brain_mask, exam.seg]:
        if path is not None and str(path) in message:
            return str(path)
    return ""


def _quarantine(paths: dict[str, Path], record: dict[str, str]) -> None:
    """Remove an exam's entry and arrays and write why it failed. Only a full disk stops the run: a
    record that cannot be written (e.g. a folder in its place) is still in the run's report."""
    for kind in ("entry", "image", "masks"):
        with contextlib.suppress(OSError):  # gone already, or a folder in its place
            paths[kind].unlink()
    try:
        write_json(paths["failed"], record, indent=1)
    except OSError as err:
        if _disk_full(err):
            raise


def process_one(exam: Exam, cache_dir: Path, config: PreprocessConfig, fingerprint: str) -> dict[str, Any]:
    """Preprocess one exam and write its cache entry; on failure write its quarantine record.

    Every step, reading and writing, is inside the exam's guard: whatever goes wrong quarantines this
    exam and the run goes on, except a full disk (``OSError`` ENOSPC/EDQUOT), which is raised.

    Runs in a worker process. Returns ``{"exam_id", "ok", "file", "reason"}``.
    """
    paths = entry_paths(cache_dir, exam.exam_id)
    try:
        for path in paths.values():
            remove_stale_temps(path)
        _write_entry(exam, paths, config, fingerprint)
    except Exception as err:  # any failure quarantines this exam and the run goes on
        if _disk_full(err):
            raise
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        if not isinstance(err, ValueError | OSError):
            reason += " | " + traceback.format_exc(limit=3).replace("\n", " ")
        record = {"exam_id": exam.exam_id, "file": _failure_file(str(err), exam), "reason": reason}
        _quarantine(paths, record)
        return {"ok": False, **record}
    with contextlib.suppress(OSError):  # a stale record that cannot go is only listed in quarantine.csv
        paths["failed"].unlink(missing_ok=True)
    return {"ok": True, "exam_id": exam.exam_id, "file": "", "reason": ""}


def _write_entry(exam: Exam, paths: dict[str, Path], config: PreprocessConfig, fingerprint: str) -> None:
    """Preprocess one exam and write its arrays, then its entry (last: it makes the exam count as cached)."""
    result = preprocess_exam(exam, config)
    image_sha, image_bytes = _save_npy(paths["image"], result.image.astype(np.float16))
    masks_sha, masks_bytes = _save_npy(paths["masks"], result.masks)
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
        "sha256": {"image": image_sha, "masks": masks_sha},
        "bytes": {"image": image_bytes, "masks": masks_bytes},
    }
    write_text_atomic(paths["entry"], json_text(entry, indent=1) + "\n")


def _is_current(paths: dict[str, Path], fingerprint: str) -> bool:
    """True when the exam's entry has this fingerprint and its arrays their size and checksum."""
    try:
        entry = json.loads(paths["entry"].read_text())
        if entry.get("fingerprint") != fingerprint:
            return False
        verify_entry(paths["entry"].parents[1], entry)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # a damaged entry or array: rebuild it
    return True


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
    write_json(cache_dir / "plan.json", plan)


def run_preprocess(
    manifest: Manifest,
    cache_dir: str | Path,
    config: PreprocessConfig | None = None,
    workers: int = 1,
    shard: Shard = Shard(),
    on_progress: Callable[[int, int], None] | None = None,
) -> RunReport:
    """Preprocess every exam of the manifest (or of one shard) into ``cache_dir``.

    Exams with errors in the manifest (missing file, path outside the root, no sequence, an exam_id
    on several rows: all its rows) and exams whose files cannot be read or written are quarantined;
    a row without exam_id is reported; the others are cached. Exams already cached with the same
    fingerprint, whose arrays still match their size and checksum, are skipped; a damaged one is rebuilt.
    A shard checks the files of its own rows only (the checks across rows read no file).

    Args:
        manifest: the exams.
        cache_dir: the cache folder (created if missing).
        config: preprocessing settings; their fingerprint decides what is rebuilt.
        workers: processes; 1 runs in this process.
        shard: which subset of exams this run owns (for cluster array jobs).
        on_progress: called as ``on_progress(finished, total)`` after each exam.

    Returns:
        A :class:`RunReport`. A run without shards (``0/1``) has merged the index and quarantine files
        (:func:`merge_index`) before returning; a shard has written its part (``report.part``) and left the
        index alone: run :func:`merge_index` once every shard has finished.

    Raises:
        ManifestError: a required column is missing (nothing is written).
        OSError: the disk is full or read-only (one message naming the folder); the exams finished
            before are cached (and, without shards, indexed) where the disk allows.
        WorkerDied: a worker process was killed (out of memory?); finished exams are kept.
    """
    config = config or PreprocessConfig()
    cache_dir = Path(cache_dir)
    ids = manifest.table["exam_id"].tolist()
    rows = [i for i, exam_id in enumerate(ids) if not exam_id or shard.owns(exam_id)]  # every row of an owned id
    problems = validate(manifest, rows=rows)
    missing = [p for p in problems if p.severity == "error" and p.row is None]
    if missing:
        raise ManifestError("; ".join(p.message for p in missing))
    (cache_dir / EXAMS_DIR).mkdir(parents=True, exist_ok=True)
    write_plan(cache_dir, config)
    _clear_parts(cache_dir, shard)
    plan = plan_fingerprint(config)
    report = RunReport(cache_dir=cache_dir)

    row_errors: dict[int, list[Problem]] = {}
    for problem in problems:
        if problem.severity == "error" and problem.row is not None:
            row_errors.setdefault(problem.row - 1, []).append(problem)
    rows_of = manifest.table.groupby("exam_id", sort=False).indices if len(manifest) else {}
    todo: list[tuple[Exam, str]] = []
    seen: set[str] = set()
    try:
        for index in rows:
            exam_id = ids[index]
            if not exam_id:
                report.failures.append(Failure("", "", f"manifest row {index + 1}: exam_id is empty; row skipped"))
                continue
            if exam_id in seen:
                continue  # the first row of a duplicated id quarantines the id
            seen.add(exam_id)
            found = [p for i in rows_of[exam_id] for p in row_errors.get(i, [])]  # a duplicated id: all its rows
            if found:
                reason = "; ".join(f"{p.column or 'row'}: {p.message}" for p in found)
                _quarantine_row(cache_dir, exam_id, reason, report)
                continue
            try:
                exam = manifest.exam(index)
            except PathError as err:  # already caught by validate; kept for API users
                _quarantine_row(cache_dir, exam_id, str(err), report)
                continue
            fingerprint = exam_fingerprint(exam, plan)
            if _is_current(entry_paths(cache_dir, exam_id), fingerprint):
                report.skipped += 1
                report.cached.append(exam_id)
                continue
            todo.append((exam, fingerprint))
        _run(todo, cache_dir, config, workers, report, on_progress)
    except BaseException:
        if shard.count == 1:  # a shard writes no part: `cache index` names it as not finished
            with contextlib.suppress(OSError):  # e.g. the disk is full: the entries written so far are complete
                merge_index(cache_dir)
        raise
    if shard.count == 1:
        merge_index(cache_dir)
    else:
        report.part = _write_part(cache_dir, shard, plan, report)
    return report


def _run(
    todo: list[tuple[Exam, str]],
    cache_dir: Path,
    config: PreprocessConfig,
    workers: int,
    report: RunReport,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Preprocess the exams of ``todo`` in this process or in ``workers`` processes."""
    if workers <= 1 or not todo:
        _collect((process_one(exam, cache_dir, config, fp) for exam, fp in todo), len(todo), report, on_progress)
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(process_one, exam, cache_dir, config, fp) for exam, fp in todo]
        try:
            _collect((future.result() for future in as_completed(futures)), len(todo), report, on_progress)
        except BrokenProcessPool:
            raise WorkerDied(
                f"a worker process was killed while preprocessing into {cache_dir} (most often the system ran out "
                "of memory); the exams finished so far are kept: rerun with fewer --workers"
            ) from None
        except BaseException:
            for future in futures:  # stop what has not started; the exams in flight finish or are lost
                future.cancel()
            raise


def _collect(
    results: Iterable[dict[str, Any]], total: int, report: RunReport, on_progress: Callable[[int, int], None] | None
) -> None:
    """Count each result of :func:`process_one` in ``report`` as it comes, and call ``on_progress``."""
    for finished, result in enumerate(results, start=1):
        if result["ok"]:
            report.done += 1
            report.cached.append(result["exam_id"])
        else:
            report.failures.append(Failure(result["exam_id"], result["file"], result["reason"]))
        if on_progress:
            on_progress(finished, total)


def _quarantine_row(cache_dir: Path, exam_id: str, reason: str, report: RunReport) -> None:
    record = {"exam_id": exam_id, "file": "", "reason": f"manifest: {reason}"}
    _quarantine(entry_paths(cache_dir, exam_id), record)
    report.failures.append(Failure(**record))


def _clear_parts(cache_dir: Path, shard: Shard) -> None:
    """Remove this shard's part (written again when it ends: a shard that dies leaves none, and the merge
    names it) and the parts of other layouts (a run with another ``n``, or without shards, supersedes them)."""
    for name in part_stamps(cache_dir):
        index, count = part_shard(name)
        if count != shard.count or index == shard.index:
            with contextlib.suppress(FileNotFoundError):
                (cache_dir / PARTS_DIR / name).unlink()


def _write_part(cache_dir: Path, shard: Shard, plan: str, report: RunReport) -> Path:
    """Write, atomically, what this shard cached and quarantined: its own exams only, never the index."""
    path = part_path(cache_dir, shard.index, shard.count)
    part = {
        "shard": f"{shard.index}/{shard.count}",
        "plan_fingerprint": plan,
        "done": report.done,
        "skipped": report.skipped,
        "exams": sorted(report.cached),
        "quarantined": [asdict(failure) for failure in report.failures],
    }
    write_json(path, part, indent=None)
    return path


__all__ = [
    "Cache",
    "CacheError",
    "CacheIndexWarning",
    "Failure",
    "IndexReport",
    "RunReport",
    "Shard",
    "WorkerDied",
    "cache_bytes",
    "describe",
    "entry_paths",
    "merge_index",
    "read_index",
    "read_plan",
    "run_preprocess",
    "verify_entry",
]
