"""The DICOM ingest's files between its stages: the header table that stage 1 scans in parallel and in shards
(:func:`scan_dicom`), the view of the archive that stage 2 (:func:`umbif.data.dicom.ingest_dicom`) groups,
classifies and converts from (:func:`load_archive`), and the parts its shards write for the merge (:class:`Part`).

::

    umbif ingest dicom ROOT --out OUT --scan-only --shard i/n --workers W    (n array jobs of W processes)
      -> OUT/.scan/part-<i>-of-<n>-<chunk>.parquet     one row per file whose path under ROOT hashes to part i
    umbif ingest dicom ROOT --out OUT --shard j/m --workers W                 (m array jobs)
      -> OUT/<patient>/<exam>/*.nii.gz, OUT/.convert/part-<j>-of-<m>.{series,exams}.parquet
    umbif ingest dicom ROOT --out OUT --merge  -> OUT/manifest.csv, OUT/series.csv

A scan job walks ROOT, skips the files the table already holds with the same size and mtime, reads the rest with
``W`` processes and writes a chunk every :data:`CHUNK_FILES` files (or :data:`CHUNK_SECONDS`), atomically: a
killed job loses at most the chunk it was filling.

What the table holds, per file: a keyed hash of its path (``file``), its size and mtime, why it is not a usable
image (``problem``, text that never quotes the header), or else its patient and exam pseudonyms, keyed hashes of
its SeriesInstanceUID and SOPInstanceUID, its study's day number plus a secret offset per patient
(:meth:`~umbif.data.pseudonym.Pseudonymiser.day_shift`: differences survive, the calendar date does not), a keyed
hash naming its set of identifiers (``ident``), and its geometry (Rows, Columns, ImagePositionPatient,
ImageOrientationPatient, PixelSpacing). Per chunk, in the Parquet metadata: the withheld set of each ``ident`` as
keyed hashes of its tokens (:class:`~umbif.data.pseudonym.Withheld`), the key check and the table version.

No header text (names, ids, dates, UIDs, descriptions) and no path is stored in clear: stage 2 walks ROOT again
to find and name the files (paths stay in its memory), and rereads the one header per series whose names it
classifies. Whoever holds the key can test a guessed value against the hashes, as against a pseudonym: keep the
key apart from OUT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from umbif import SEQUENCES
from umbif.data.cache import Shard
from umbif.data.dicom_io import CONVERT_DIR, SliceHeader, UnreadableFile, WorkerDied, read_header
from umbif.data.pseudonym import PathNamer, Pseudonymiser, Withheld, parse_date
from umbif.utils import atomic_write, csv_safe

SCAN_DIR = ".scan"  # under OUT: the header table
SCAN_VERSION = 1  # what a row means; a table of another version is refused
BATCH_FILES = 128  # files per task of a worker process
CHUNK_FILES = 20_000  # rows per Parquet file, at most: what a killed scan loses
CHUNK_SECONDS = 300.0  # ... or what it read in this long, whichever is less
GEOMETRY = ("px", "py", "pz", "o0", "o1", "o2", "o3", "o4", "o5", "sx", "sy")  # position, orientation, spacing
SCHEMA = pa.schema(
    [
        ("file", pa.string()),  # keyed hash of the path under ROOT
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("problem", pa.string()),  # why the file is not a usable image; null for an image
        ("patient", pa.string()),  # patient pseudonym
        ("exam", pa.string()),  # exam pseudonym
        ("has_patient_id", pa.bool_()),  # False: the study is its own patient
        ("series", pa.string()),  # keyed hash of SeriesInstanceUID
        ("instance", pa.string()),  # keyed hash of SOPInstanceUID; null when the header has none
        ("day", pa.int64()),  # StudyDate (else SeriesDate) as a day number plus the patient's secret shift
        ("ident", pa.string()),  # keyed hash of the file's identifiers: its withheld tokens are in the metadata
        ("rows", pa.int32()),
        ("columns", pa.int32()),
        *((name, pa.float64()) for name in GEOMETRY),  # NaN where the header lacks the tag
    ]
)


@dataclass(frozen=True)
class FileEntry:
    """A file under ROOT as the walk finds it; size and mtime are -1 when it cannot be stat'ed."""

    relative: str  # posix path under ROOT
    size: int
    mtime_ns: int


def walk(root: Path, exclude: Path | None = None) -> list[FileEntry]:
    """Every file under ``root`` in path order (hidden files and folders and ``exclude`` left out)."""
    found = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and Path(folder, d) != exclude)
        base = Path(folder).relative_to(root).as_posix()
        for name in sorted(f for f in filenames if not f.startswith(".")):
            try:
                stat = os.stat(os.path.join(folder, name))
                size, mtime = stat.st_size, stat.st_mtime_ns
            except OSError:  # a broken link: the scan reports it
                size = mtime = -1
            found.append(FileEntry(name if base == "." else f"{base}/{name}", size, mtime))
    return found


def file_key(pseudonymiser: Pseudonymiser, relative: str) -> str:
    """The keyed hash that stands for a path under ROOT in the table (128 bits: no two files share one)."""
    return pseudonymiser.keyed("path", relative, 32)


def check_folders(root: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """``root`` and ``out_dir`` as absolute paths.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``out_dir`` is ``root``.
    """
    root, out_dir = Path(root).absolute(), Path(out_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the folder that holds the DICOM files")
    if out_dir == root:
        raise ValueError("write the output to another folder than ROOT, e.g. next to it")
    return root, out_dir


# ----------------------------------------------------------------------------------------- one file
_TOKENS: dict[str, str] = {}  # ident -> its withheld tokens, per worker process (files of a study share them)


def _scan_file(root: Path, entry: FileEntry, pseudonymiser: Pseudonymiser) -> tuple[dict[str, Any], str | None]:
    """The table row of one file, and its ident (None for a file that is no usable image)."""
    key = {"file": file_key(pseudonymiser, entry.relative), "size": entry.size, "mtime_ns": entry.mtime_ns}
    try:
        header = read_header(root / entry.relative, root)
    except UnreadableFile as err:
        return key | {"problem": err.reason}, None
    who, shape = header.identity, header.shape or (None, None)
    patient = who.patient_id or f"\x00study {who.study_uid}"  # a study without PatientID is its own patient
    date = parse_date(who.study_date)
    found = who.identifiers
    ident = pseudonymiser.keyed("identifiers", json.dumps([sorted(v) for v in (found.names, found.ids, found.dates)]))
    if ident not in _TOKENS:
        if len(_TOKENS) > 10_000:
            _TOKENS.clear()
        _TOKENS[ident] = " ".join(sorted(Withheld(found, pseudonymiser).tokens))
    geometry = [*(header.position or [None] * 3), *(header.orientation or [None] * 6)]
    geometry += header.pixel_spacing or [None] * 2
    return key | {
        "patient": pseudonymiser.patient(patient),
        "exam": pseudonymiser.exam(patient, who.study_uid),
        "has_patient_id": bool(who.patient_id),
        "series": pseudonymiser.keyed("series", who.series_uid),
        "instance": pseudonymiser.keyed("instance", who.instance_uid) if who.instance_uid else None,
        "day": None if date is None else date.toordinal() + pseudonymiser.day_shift(patient),
        "ident": ident,
        "rows": shape[0],
        "columns": shape[1],
        **dict(zip(GEOMETRY, geometry, strict=True)),
    }, ident


def _scan_batch(
    root: Path, entries: list[FileEntry], pseudonymiser: Pseudonymiser
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows of a batch of files and the withheld tokens of their idents (run in a worker process)."""
    rows, tokens = [], {}
    for entry in entries:
        row, ident = _scan_file(root, entry, pseudonymiser)
        rows.append(row)
        if ident is not None:
            tokens[ident] = _TOKENS[ident]
    return rows, tokens


def _batches(
    root: Path, entries: list[FileEntry], pseudonymiser: Pseudonymiser, workers: int
) -> Iterator[tuple[list[dict[str, Any]], dict[str, str]]]:
    """Scanned batches, as they finish: in this process, or in ``workers`` processes (a few batches in flight
    each, so that the queue never holds the whole archive)."""
    batches = (entries[i : i + BATCH_FILES] for i in range(0, len(entries), BATCH_FILES))
    if workers <= 1:
        yield from (_scan_batch(root, batch, pseudonymiser) for batch in batches)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(_scan_batch, root, batch, pseudonymiser) for batch in islice(batches, 4 * workers)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                if (batch := next(batches, None)) is not None:
                    pending.add(pool.submit(_scan_batch, root, batch, pseudonymiser))


class _Chunks:
    """Rows gathered into Parquet files ``part-<i>-of-<n>-<chunk>.parquet``, each written atomically when full."""

    def __init__(self, scan_dir: Path, shard: Shard, pseudonymiser: Pseudonymiser):
        self.prefix = f"part-{shard.index}-of-{shard.count}-"
        taken = [int(p.stem.rsplit("-", 1)[1]) for p in scan_dir.glob(f"{self.prefix}*.parquet")]
        self.scan_dir, self.number, self.check = scan_dir, max(taken, default=-1) + 1, pseudonymiser.check()
        self.rows: list[dict[str, Any]] = []
        self.tokens: dict[str, str] = {}
        self.since = time.monotonic()

    def add(self, rows: list[dict[str, Any]], tokens: dict[str, str]) -> None:
        self.rows += rows
        self.tokens |= tokens
        if len(self.rows) >= CHUNK_FILES or time.monotonic() - self.since > CHUNK_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            metadata = {
                "umbif_scan_version": str(SCAN_VERSION),
                "key_check": self.check,
                "tokens": json.dumps(self.tokens),
            }
            table = pa.Table.from_pylist(self.rows, schema=SCHEMA.with_metadata(metadata))
            with atomic_write(self.scan_dir / f"{self.prefix}{self.number:06d}.parquet") as handle:
                pq.write_table(table, handle, compression="zstd")
            self.number += 1
        self.rows, self.tokens, self.since = [], {}, time.monotonic()


# ------------------------------------------------------------------------------------------ the scan
@dataclass
class ScanReport:
    """What one scan did: the files of its shard, how many it read now, how many were already in the table,
    and how many of those read now are no usable image."""

    files: int
    scanned: int
    skipped: int
    unreadable: int


def scan_files(
    root: Path,
    out_dir: Path,
    entries: list[FileEntry],
    pseudonymiser: Pseudonymiser,
    workers: int = 1,
    shard: Shard = Shard(),
    on_progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Read the headers of ``entries`` (files under ``root``) that the table does not hold yet into it."""
    known = set(_table(out_dir, pseudonymiser, ["file", "size", "mtime_ns"]).itertuples(index=False, name=None))
    todo = [e for e in entries if (file_key(pseudonymiser, e.relative), e.size, e.mtime_ns) not in known]
    chunks, done, unreadable = _Chunks(out_dir / SCAN_DIR, shard, pseudonymiser), 0, 0
    try:
        for rows, tokens in _batches(root, todo, pseudonymiser, workers):
            chunks.add(rows, tokens)
            done += len(rows)
            unreadable += sum(row.get("problem") is not None for row in rows)
            if on_progress:
                on_progress(done, len(todo))
    except BrokenProcessPool:
        raise WorkerDied(
            f"a worker process was killed while scanning into {out_dir / SCAN_DIR} (most often the system ran out of "
            "memory); the files scanned so far are kept: rerun with fewer --workers"
        ) from None
    finally:
        chunks.flush()
    return ScanReport(len(entries), len(todo), len(entries) - len(todo), unreadable)


def scan_dicom(
    root: str | Path,
    out_dir: str | Path,
    pseudonymiser: Pseudonymiser,
    workers: int = 1,
    shard: Shard = Shard(),
    on_progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Read the header of every file of ``shard`` under ``root`` into the table in ``out_dir/.scan``.

    Args:
        root: folder searched recursively (hidden files and ``out_dir`` left out).
        out_dir: the ingest's output folder; the table goes to its ``.scan`` folder.
        pseudonymiser: the key for pseudonyms and hashes; every shard and stage must use the same.
        workers: processes reading headers.
        shard: the files whose path under ``root`` hashes to it (``Shard(i, n)`` for array job i of n).
        on_progress: called as ``(done, total)`` over the files read now.

    Example:
        >>> scan_dicom("archive", "nifti", Pseudonymiser.from_user("~/umbif.key"), workers=8)  # doctest: +SKIP

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``out_dir`` is ``root``, or the table was written with another key or version.
        WorkerDied: a worker process was killed (what was scanned is kept).
    """
    root, out_dir = check_folders(root, out_dir)
    entries = [entry for entry in walk(root, exclude=out_dir) if shard.owns(entry.relative)]
    return scan_files(root, out_dir, entries, pseudonymiser, workers, shard, on_progress)


# ----------------------------------------------------------------------------------------- the table
def _chunk_files(out_dir: Path, pseudonymiser: Pseudonymiser) -> list[Path]:
    """The table's Parquet files, each checked to be of this version and key."""
    paths = sorted((out_dir / SCAN_DIR).glob("part-*.parquet"))
    for path in paths:
        metadata = pq.read_schema(path).metadata or {}
        if metadata.get(b"umbif_scan_version") != str(SCAN_VERSION).encode():
            raise ValueError(f"{path} is not a header table of this umbif; delete {path.parent} to scan again")
        if metadata.get(b"key_check") != pseudonymiser.check().encode():
            raise ValueError(
                f"{path.parent} was scanned with another pseudonymisation key: use that key, or delete the folder "
                "(and the outputs made with the other key) to ingest again"
            )
    return paths


def _table(out_dir: Path, pseudonymiser: Pseudonymiser, columns: list[str] | None = None) -> pd.DataFrame:
    paths = _chunk_files(out_dir, pseudonymiser)
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    tables = [pq.read_table(path, columns=columns).select(schema.names) for path in paths]
    nullable = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype()}
    return pa.concat_tables(tables or [schema.empty_table()]).to_pandas(types_mapper=nullable.get)


def _tokens(out_dir: Path, pseudonymiser: Pseudonymiser) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for path in _chunk_files(out_dir, pseudonymiser):
        tokens |= json.loads((pq.read_schema(path).metadata or {})[b"tokens"])
    return tokens


@dataclass
class Archive:
    """Every file under ROOT in path order, with its row of the header table, and what the rows refer to."""

    root: Path
    files: pd.DataFrame  # ``relative`` (posix path under ROOT, in memory only) and the table's columns
    tokens: dict[str, str]  # ident -> its withheld tokens (keyed hashes, space-separated)
    fingerprint: str  # of the files and their sizes and mtimes: stage 2 shards that agree saw the same archive

    @property
    def readable(self) -> pd.DataFrame:
        """The files that are DICOM images, in path order."""
        return self.files[self.files["problem"].isna()]

    def namer(self, pseudonymiser: Pseudonymiser) -> PathNamer:
        """How files are named in outputs: under the folder of their exam (or patient), names that hold an
        identifier of any image hashed (one file per folder and owner is enough to find the folders that hold
        the files of one owner only)."""
        readable = self.readable
        files = readable.assign(folder=readable["relative"].str.replace(r"/?[^/]*$", "", regex=True))
        owners = [
            files.drop_duplicates([level, "folder"]).groupby(level, sort=False)["relative"].agg(list).to_dict()
            for level in ("exam", "patient")
        ]
        tokens = (token for ident in set(readable["ident"]) for token in self.tokens[ident].split())
        return PathNamer(pseudonymiser, Withheld(pseudonymiser=pseudonymiser, tokens=tokens), owners)

    def images(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One row per image, and the rows of its copies (same SOPInstanceUID, e.g. exported twice), with the
        ``key`` they share: of the copies, the first whose geometry is complete is kept; the others are read when
        its pixel data does not decode, so the copy that decodes wins in any walk order."""
        readable = self.readable
        complete = readable[["px", "o0", "sx"]].notna().all(axis=1).to_numpy()
        ordered = readable.iloc[np.argsort(~complete, kind="stable")]
        ordered = ordered.assign(key=ordered["instance"].fillna(ordered["file"]))
        copy = ordered["key"].duplicated()
        return ordered[~copy], ordered[copy]

    def reread(self, relative: str, named: str) -> SliceHeader:
        """The whole header of a scanned file, read again (its names and descriptions are not in the table), known
        by ``named`` in what it says."""
        try:
            header = read_header(self.root / relative, self.root)
        except UnreadableFile as err:
            raise ValueError(f"{named} can no longer be read ({err.reason}): rerun to scan it again") from None
        return dataclasses.replace(header, relative=named)


def load_archive(
    root: Path,
    out_dir: Path,
    pseudonymiser: Pseudonymiser,
    workers: int = 1,
    scan_missing: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Archive:
    """Walk ``root`` and join each file to its row of the table, scanning the files it lacks first (new files,
    and files whose size or mtime changed) when ``scan_missing``.

    Raises:
        ValueError: files are not scanned and ``scan_missing`` is False, or the table has another key.
    """
    entries = walk(root, exclude=out_dir)
    walked = pd.DataFrame(
        {
            "relative": [e.relative for e in entries],
            "file": [file_key(pseudonymiser, e.relative) for e in entries],
            "size": pd.array([e.size for e in entries], dtype="Int64"),
            "mtime_ns": pd.array([e.mtime_ns for e in entries], dtype="Int64"),
        }
    )
    table = _table(out_dir, pseudonymiser).drop_duplicates(["file", "size", "mtime_ns"])
    files = walked.merge(table, on=["file", "size", "mtime_ns"], how="left", indicator=True)
    missing = files["_merge"] == "left_only"
    if missing.any() and not scan_missing:
        raise ValueError(
            f"{int(missing.sum())} of {len(files)} files under ROOT are not in the header table {out_dir / SCAN_DIR} "
            "(new or changed since): run `umbif ingest dicom ROOT --out OUT --scan-only --shard i/n` for every part"
        )
    if missing.any():
        todo = [entry for entry, lacking in zip(entries, missing, strict=True) if lacking]
        scan_files(root, out_dir, todo, pseudonymiser, workers, on_progress=on_progress)
        return load_archive(root, out_dir, pseudonymiser, workers, scan_missing=False)
    files = files.drop(columns="_merge")
    digest = hashlib.sha256(pd.util.hash_pandas_object(walked[["file", "size", "mtime_ns"]], index=False).to_numpy())
    return Archive(root, files, _tokens(out_dir, pseudonymiser), digest.hexdigest())


# ---------------------------------------------------------------------------------- stage 2 on disk
SCAN_KEY = ("file", "size", "mtime_ns")  # a file as the table knows it
SERIES_COLUMNS = (
    "exam_id",
    "patient_id",
    "series_number",
    "description",
    "folder",
    "files",
    "decision",
    "reason",
    "nifti",
)
EXAM_COLUMNS = ("exam_id", "patient_id", "site", "timepoint", *SEQUENCES)  # the manifest columns ingest fills
PART_ORDER = ["patient_id", "_timepoint", "exam_id"]  # the order of studies in series.csv and the manifest


@dataclass
class Part:
    """What stage 2 makes of a shard's patients: its rows of ``series.csv`` and of the manifest (paths under OUT),
    each with ``_timepoint`` (-1 when undated) to put the shards' parts in the order one shard gives."""

    series: pd.DataFrame  # SERIES_COLUMNS, _timepoint
    exams: pd.DataFrame  # EXAM_COLUMNS, _timepoint

    @classmethod
    def of(cls, records: list[dict[str, object]], timepoints: list[int | None], rows: list[dict[str, object]]) -> Part:
        """A part from its series records (with their exams' timepoints) and its manifest rows."""
        series = pd.DataFrame.from_records(records, columns=SERIES_COLUMNS)
        series = series.astype({"series_number": "Int64", "files": "int64"})  # a SeriesNumber may be missing
        exams = pd.DataFrame([dict.fromkeys(EXAM_COLUMNS, "") | r for r in rows], columns=EXAM_COLUMNS, dtype=str)
        return cls(
            series.assign(_timepoint=[-1 if t is None else t for t in timepoints]),
            exams.assign(_timepoint=[int(t) if t else -1 for t in exams["timepoint"]]),
        )

    def write(self, out_dir: Path, shard: Shard, fingerprint: str) -> None:
        """Write it to ``OUT/.convert`` (the exams last: a part is there when they are)."""
        for kind, frame in (("series", self.series), ("exams", self.exams)):
            table = pa.Table.from_pandas(frame, preserve_index=False)
            table = table.replace_schema_metadata((table.schema.metadata or {}) | {b"umbif_fingerprint": fingerprint})
            with atomic_write(out_dir / CONVERT_DIR / f"part-{shard.index}-of-{shard.count}.{kind}.parquet") as handle:
                pq.write_table(table, handle)

    @classmethod
    def read(cls, out_dir: Path) -> tuple[Part, list[str]]:
        """The parts of every shard of the newest complete sharding in ``OUT/.convert`` as one, and a line for
        each other sharding left aside.

        Raises:
            ValueError: no complete set of parts (the message names the shards missing), or parts made from
                different archives or settings.
        """
        found: dict[int, dict[int, Path]] = {}
        for path in (out_dir / CONVERT_DIR).glob("part-*-of-*.exams.parquet"):
            index, count = (int(v) for v in path.name.split(".")[0].removeprefix("part-").split("-of-"))
            found.setdefault(count, {})[index] = path
        complete = [n for n, parts in found.items() if len(parts) == n]
        if not complete:
            lacking = "; ".join(f"{sorted(set(range(n)) - set(parts))} of {n}" for n, parts in sorted(found.items()))
            missing = f"shards {lacking} missing" if found else "none"
            raise ValueError(
                f"no complete set of parts in {out_dir / CONVERT_DIR} ({missing}): run `umbif ingest dicom ROOT --out "
                "OUT --shard i/n` for every shard first"
            )
        count = max(complete, key=lambda n: max(p.stat().st_mtime for p in found[n].values()))
        notes = [f"the parts of {n} shards in {out_dir / CONVERT_DIR} are older; not used" for n in found if n != count]
        tables = {
            kind: [pq.read_table(out_dir / CONVERT_DIR / f"part-{i}-of-{count}.{kind}.parquet") for i in range(count)]
            for kind in ("series", "exams")
        }
        if len({(t.schema.metadata or {}).get(b"umbif_fingerprint") for ts in tables.values() for t in ts}) > 1:
            raise ValueError(
                f"the {count} parts in {out_dir / CONVERT_DIR} were made from different files under ROOT or with "
                "different --site or --rules: rerun every shard with the same (converted files are kept)"
            )
        series, exams = (pd.concat([t.to_pandas() for t in tables[k]], ignore_index=True) for k in ("series", "exams"))
        return cls(series, exams), notes

    def finish(self, out_dir: Path) -> tuple[pd.DataFrame, list[dict[str, object]]]:
        """Write ``OUT/series.csv``; return it and the manifest rows (absolute paths), in order of patient,
        timepoint and exam."""
        series = self.series.sort_values(PART_ORDER, kind="stable").drop(columns="_timepoint").reset_index(drop=True)
        with atomic_write(out_dir / "series.csv", "w") as handle:
            handle.write(csv_safe(series).to_csv(index=False))
        return series, self.rows(out_dir)

    def rows(self, out_dir: Path) -> list[dict[str, object]]:
        """The manifest rows, in order, paths made absolute under ``out_dir``."""
        exams = self.exams.sort_values(PART_ORDER, kind="stable").drop(columns="_timepoint")
        return [row | {s: out_dir / row[s] for s in SEQUENCES if row[s]} for row in exams.to_dict("records")]
