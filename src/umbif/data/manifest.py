"""The exam manifest: one row per exam, read and written as CSV or Parquet, validated before use.

Columns (all text; an empty cell means "not available")::

    exam_id, patient_id, site, timepoint      identity; timepoint orders a patient's exams
    t1, t1c, t2, flair                        image paths, relative to the manifest's root
    brain_mask, seg                           optional mask / tumour segmentation paths
    idh, mgmt, codeletion_1p19q, outcome      optional labels, values in ``LABELS``
    anything else                             kept as it is ("free columns")

Paths are relative to the manifest's *root*: the folder the manifest file is in, unless the caller
names another. A path that leads outside the root (``..``, an absolute path elsewhere, a symlink
out) is refused, so a manifest cannot make umbif read files it was not pointed at.

The identity columns (``exam_id``, ``patient_id``, ``site``) are normalised when a manifest is made:
surrounding spaces stripped and Unicode in NFC form, so ``" P1"`` and ``"P1"``, or an accented name
typed on two systems, are one patient. A CSV manifest is written with text cells that a spreadsheet
would run as formulas escaped (``'=...``) and read back unescaped, so it round-trips.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from umbif import SEQUENCES
from umbif.data.sequences import MASK_KINDS
from umbif.utils import atomic_write, csv_cell, csv_unescape

ID_COLUMNS: tuple[str, ...] = ("exam_id", "patient_id", "site", "timepoint")
PATH_COLUMNS: tuple[str, ...] = SEQUENCES + MASK_KINDS
LABELS: dict[str, tuple[str, str]] = {
    # label column -> (positive class, negative class); positive is what a classifier scores
    "idh": ("mutant", "wildtype"),
    "mgmt": ("methylated", "unmethylated"),
    "codeletion_1p19q": ("codeleted", "intact"),
    "outcome": ("progression", "treatment_effect"),
}
COLUMNS: tuple[str, ...] = ID_COLUMNS + PATH_COLUMNS + tuple(LABELS)
REQUIRED: tuple[str, ...] = ("exam_id", "patient_id")
NORMALISED: tuple[str, ...] = ("exam_id", "patient_id", "site")  # stripped, Unicode NFC
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # a number is no formula: "-1" stays as it is


class ManifestError(ValueError):
    """A manifest that cannot be used; the message lists every problem found."""


class PathError(ValueError):
    """A manifest path that cannot be used: it cannot be resolved (a symbolic link loop, a bad name)."""


class PathEscapeError(PathError):
    """A manifest path that leads outside the manifest's root."""


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`validate`. ``row`` is the 1-based data row (the header is row 0)."""

    row: int | None
    column: str | None
    message: str
    severity: str = "error"  # "error" makes validation fail; "warning" is reported only

    def __str__(self) -> str:
        where = ", ".join(p for p in (f"row {self.row}" if self.row else "", self.column or "") if p)
        return f"{self.severity}: {where + ': ' if where else ''}{self.message}"


@dataclass(frozen=True)
class Exam:
    """One exam, with its paths resolved against the manifest's root (TorchIO's Subject, smaller)."""

    exam_id: str
    patient_id: str
    site: str
    timepoint: float | None
    sequences: dict[str, Path]  # canonical name -> file, present sequences only, canonical order
    brain_mask: Path | None
    seg: Path | None
    labels: dict[str, str]  # label column -> value, known labels only


def _blank_to_str(frame: pd.DataFrame) -> pd.DataFrame:
    """All columns as Python strings with "" for missing, so CSV and Parquet read the same."""
    frame = frame.astype(object).where(frame.notna(), "")
    return frame.map(lambda v: v if isinstance(v, str) else _format_number(v))


def _format_number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def normalise_id(value: str) -> str:
    """An identifier as umbif compares it: surrounding spaces stripped, Unicode composed (NFC)."""
    return unicodedata.normalize("NFC", value).strip()


def _csv_cell(value: str) -> str:
    """A manifest cell as written to CSV: numbers as they are, formula-like text escaped (:func:`csv_cell`)."""
    return value if _NUMBER.fullmatch(value) else csv_cell(value)


class Manifest:
    """A manifest table plus the root its paths are relative to.

    Args:
        table: one row per exam; missing standard columns are added empty.
        root: folder the relative paths start from.
    """

    def __init__(self, table: pd.DataFrame, root: str | Path):
        table = _blank_to_str(table.reset_index(drop=True))
        self.given: frozenset[str] = frozenset(table.columns)  # the columns the table came with
        self.missing: tuple[str, ...] = tuple(c for c in REQUIRED if c not in table.columns)  # said once by validate
        for column in NORMALISED:
            if column in table.columns:
                table[column] = table[column].map(normalise_id)
        for column in COLUMNS:
            if column not in table.columns:
                table[column] = ""
        extra = [c for c in table.columns if c not in COLUMNS]
        self.table = table[list(COLUMNS) + extra]
        self.root = Path(root).resolve()

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def read(cls, path: str | Path, root: str | Path | None = None) -> Manifest:
        """Read a ``.csv`` or ``.parquet`` manifest; ``root`` defaults to the file's folder.

        Raises:
            FileNotFoundError: no file at ``path``.
            ManifestError: a folder, an unknown suffix, or a file that is not a readable CSV (UTF-8) or
                Parquet table; the message names the file and the problem.
        """
        path = Path(path)
        if path.is_dir():
            raise ManifestError(f"{path} is a folder, not a manifest; give the manifest file (.csv or .parquet)")
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} does not exist; build one with `umbif ingest`")
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ManifestError(f"{path}: a manifest must end in .csv or .parquet")
        try:
            table = pd.read_parquet(path) if suffix == ".parquet" else _read_csv(path)
        except UnicodeDecodeError:
            raise ManifestError(f"{path}: not UTF-8 text ({_first_bad_byte(path)}); save it as a UTF-8 CSV") from None
        except pd.errors.EmptyDataError:
            raise ManifestError(
                f"{path}: the file is empty; a manifest needs a header row (exam_id, patient_id, ...)"
            ) from None
        except ManifestError:
            raise
        except Exception as err:  # pandas and pyarrow raise many types for a malformed file
            kind = "Parquet" if suffix == ".parquet" else "CSV"
            raise ManifestError(f"{path}: not a readable {kind} manifest ({type(err).__name__}: {err})") from None
        return cls(table, path.parent if root is None else root)

    def write(self, path: str | Path) -> None:
        """Write as CSV or Parquet (by suffix), atomically."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ValueError(f"{path}: a manifest must end in .csv or .parquet")
        if suffix == ".csv":
            buffer = io.StringIO()
            table = self.table.map(_csv_cell).rename(columns=lambda name: _csv_cell(str(name)))
            carriage_return = bool(table.map(lambda v: "\r" in v).to_numpy().any())  # pandas would not quote it
            table.to_csv(buffer, index=False, quoting=csv.QUOTE_NONNUMERIC if carriage_return else csv.QUOTE_MINIMAL)
            with atomic_write(path, "w") as handle:
                handle.write(buffer.getvalue())
        else:
            with atomic_write(path, "wb") as handle:
                self.table.astype(str).to_parquet(handle, index=False)

    def resolve(self, value: str) -> Path:
        """Absolute path of a manifest path value.

        Raises:
            PathEscapeError: the path (after following symlinks) is outside the root.
            PathError: the path cannot be resolved (a symbolic link loop, a NUL character).
        """
        candidate = Path(value)
        try:
            full = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        except RuntimeError:  # Python < 3.13 reports a symbolic link loop so
            raise PathError(f"path {value!r} is a symbolic link loop; point it at a file") from None
        except (OSError, ValueError) as err:
            reason = "a symbolic link loop" if getattr(err, "errno", None) == errno.ELOOP else str(err)
            raise PathError(f"path {value!r} cannot be resolved ({reason})") from None
        if not full.is_relative_to(self.root):
            raise PathEscapeError(f"path {value!r} leads outside the manifest root {self.root}")
        return full

    def relocate(self, root: str | Path) -> Manifest:
        """The same exams with paths rewritten relative to a new root (e.g. where the file goes).

        A path that cannot be resolved (a link loop) is moved as written; :func:`validate` reports it.

        Raises:
            PathEscapeError: a file is not under the new root.
        """
        new_root = Path(root).resolve()
        table = self.table.copy()
        for column in PATH_COLUMNS:
            for index, value in table[column].items():
                if not value:
                    continue
                try:
                    full = self.resolve(value)
                except PathEscapeError:
                    raise
                except PathError:
                    full = Path(os.path.normpath(self.root / value))
                if not full.is_relative_to(new_root):
                    raise PathEscapeError(
                        f"{full} is outside {new_root}; put the manifest in the data folder or a parent of it"
                    )
                table.at[index, column] = full.relative_to(new_root).as_posix()
        return Manifest(table, new_root)

    def exam(self, index: int) -> Exam:
        """The exam in data row ``index`` (0-based), paths resolved; raises on an escaping path."""
        row = self.table.iloc[index]
        paths = {c: self.resolve(row[c]) for c in PATH_COLUMNS if row[c]}
        timepoint = _parse_timepoint(row["timepoint"])
        return Exam(
            exam_id=row["exam_id"],
            patient_id=row["patient_id"],
            site=row["site"],
            timepoint=None if timepoint is None or isinstance(timepoint, str) else timepoint,
            sequences={s: paths[s] for s in SEQUENCES if s in paths},
            brain_mask=paths.get("brain_mask"),
            seg=paths.get("seg"),
            labels={k: row[k] for k in LABELS if row[k]},
        )

    def exams(self) -> Iterator[Exam]:
        for index in range(len(self)):
            yield self.exam(index)


def _first_bad_byte(path: Path) -> str:
    """Where a file stops being UTF-8, as ``line L, byte B`` (pandas reports the offset in its own chunk)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return f"line {line}, byte {err.start}"
    return "an encoding pandas could not read"


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV manifest as text cells: header names stripped, escaped formula cells (``'=x``) restored.

    Raises:
        ManifestError: a column name appears twice (pandas would rename one silently).
    """
    raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    names = [csv_unescape(name).strip() for name in raw.iloc[0]]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ManifestError(f"{path}: column {twice[0]!r} appears more than once in the header; keep one")
    table = raw.iloc[1:].map(csv_unescape)
    table.columns = names
    return table


def _parse_timepoint(value: str) -> float | str | None:
    """A number, None when empty, or the offending text when it is not a number."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def validate(manifest: Manifest, check_files: bool = True, rows: Iterable[int] | None = None) -> list[Problem]:
    """Every problem of a manifest, in row order; an empty list means it is usable.

    Errors: missing required column (said once), empty exam/patient id, duplicate exam_id (on each
    row after the first; preprocessing quarantines every row of the id), exam without any sequence,
    path outside the root or unresolvable (a link loop), missing file, a folder or FIFO given as a
    file (``check_files``), label value outside its set, non-numeric timepoint. Warnings: no site
    column or an empty site, one patient at two sites, patient ids that differ only in case, 1p/19q
    codeleted in an IDH-wildtype tumour, two exams of one patient at the same timepoint.

    The checks of cells and across rows cover the whole table and read no file (about a second for
    50k rows). The paths of ``rows`` are resolved and checked with one ``lstat`` per file and one per
    folder not seen before (:class:`_PathChecker`).

    Args:
        manifest: the manifest.
        check_files: also check that each file exists and is a regular file (paths are always checked
            to stay inside the root).
        rows: the 0-based rows whose paths are checked (default: every row); a shard of
            ``umbif preprocess`` checks the rows of its own exams only.
    """
    table = manifest.table
    found: list[tuple[int, int, Problem]] = [  # (row, rank of the check within a row, problem)
        (0, 0, Problem(None, column, f"required column {column!r} is missing; add it (one value per exam)"))
        for column in manifest.missing
    ]
    if "site" not in manifest.given and len(table):
        found.append(
            (0, 0, Problem(None, "site", "no site column; leave-one-site-out will group every exam as ''", "warning"))
        )

    def add(mask: pd.Series, rank: int, problem: Callable[[int], Problem]) -> None:
        found.extend((i + 1, rank, problem(int(i))) for i in mask.to_numpy().nonzero()[0])

    for rank, column in enumerate(REQUIRED):
        if column not in manifest.missing:
            add(table[column].eq(""), rank, lambda i, c=column: Problem(i + 1, c, f"{c} is empty"))
    ids = table["exam_id"].tolist()
    repeated = table["exam_id"].duplicated() & table["exam_id"].ne("")
    first_row = {exam_id: i + 1 for i, exam_id in reversed(list(enumerate(ids)))} if repeated.any() else {}
    add(
        repeated,
        2,
        lambda i: Problem(i + 1, "exam_id", f"duplicate exam_id {ids[i]!r} (first in row {first_row[ids[i]]})"),
    )
    if "site" in manifest.given:
        add(
            table["site"].eq(""),
            3,
            lambda i: Problem(i + 1, "site", "site is empty; leave-one-site-out will group it as ''", "warning"),
        )
    found += _timepoint_problems(table)
    no_sequence = f"exam has no sequence (none of {', '.join(SEQUENCES)} is given)"
    add(table[list(SEQUENCES)].eq("").all(axis=1), 5, lambda i: Problem(i + 1, None, no_sequence))
    checker = _PathChecker(manifest, check_files)
    paths = {column: table[column].tolist() for column in PATH_COLUMNS}
    for i in sorted(set(range(len(table)) if rows is None else rows)):
        for rank, column in enumerate(PATH_COLUMNS, start=6):
            if paths[column][i]:
                found += [(i + 1, rank, p) for p in checker.check(paths[column][i], i + 1, column)]
    for rank, (column, allowed) in enumerate(LABELS.items(), start=6 + len(PATH_COLUMNS)):
        values = table[column].tolist()
        add(
            ~table[column].isin([*allowed, ""]),
            rank,
            lambda i, c=column, v=values, a=allowed: Problem(
                i + 1, c, f"unknown label {v[i]!r}; allowed: {', '.join(a)} or empty"
            ),
        )
    who = "1p/19q codeleted but IDH wildtype: not a WHO 2021 entity"
    rank = 6 + len(PATH_COLUMNS) + len(LABELS)
    add(
        table["codeletion_1p19q"].eq("codeleted") & table["idh"].eq("wildtype"),
        rank,
        lambda i: Problem(i + 1, "codeletion_1p19q", who, "warning"),
    )
    found += [(p.row or 0, rank + 1, p) for p in _identity_warnings(table)]
    return [problem for _, _, problem in sorted(found, key=lambda item: item[:2])]


def _timepoint_problems(table: pd.DataFrame) -> list[tuple[int, int, Problem]]:
    """A timepoint that is not a number (error), and two exams of one patient at one timepoint (warning)."""
    found = []
    first: dict[tuple[str, float], int] = {}
    for n, (text, patient) in enumerate(zip(table["timepoint"], table["patient_id"], strict=True), start=1):
        timepoint = _parse_timepoint(text)
        if isinstance(timepoint, str):
            found.append((n, 4, Problem(n, "timepoint", f"timepoint {timepoint!r} is not a number")))
        elif timepoint is not None and patient:
            row = first.setdefault((patient, timepoint), n)
            if row != n:
                found.append((n, 4, Problem(n, "timepoint", f"same patient and timepoint as row {row}", "warning")))
    return found


def _identity_warnings(table: pd.DataFrame) -> list[Problem]:
    """A patient seen at two sites (a split by site cannot keep it on one side), and patient ids that
    differ only in case (one patient spelt two ways lands in train and test)."""
    problems = []
    first_site: dict[str, tuple[str, int]] = {}
    warned: set[str] = set()
    spellings: dict[str, tuple[str, int]] = {}
    for n, (patient, site) in enumerate(zip(table["patient_id"], table["site"], strict=True), start=1):
        if not patient:
            continue
        seen_site, seen_row = first_site.setdefault(patient, (site, n)) if site else (site, n)  # "" is warned apart
        if site != seen_site and patient not in warned:
            warned.add(patient)
            problems.append(
                Problem(
                    n,
                    "site",
                    f"patient {patient!r} is at site {site!r} here and at {seen_site!r} in row {seen_row}; "
                    "a leave-one-site-out split puts it on both sides (check the patient ids)",
                    "warning",
                )
            )
        spelt, spelt_row = spellings.setdefault(patient.casefold(), (patient, n))
        if spelt != patient and f"case:{patient}" not in warned:
            warned.add(f"case:{patient}")
            problems.append(
                Problem(
                    n,
                    "patient_id",
                    f"patient_id {patient!r} differs only in case from {spelt!r} in row {spelt_row}; "
                    "if they are one patient, spell them the same",
                    "warning",
                )
            )
    return problems


class _PathChecker:
    """The path checks of :func:`validate` for many rows, with the findings of :func:`_check_path` at a
    fraction of its cost: each folder is looked up once, so a plain path (relative, no ``.`` or ``..``, no
    symbolic link on the way) costs one ``lstat`` of its file plus one per folder not seen before, where
    :meth:`Manifest.resolve` and ``stat`` cost one per path component (9 for ``site/patient/exam/t1.nii.gz``
    under ``/data/study``). Every other path goes through :func:`_check_path` itself."""

    def __init__(self, manifest: Manifest, check_files: bool):
        self.manifest = manifest
        self.check_files = check_files
        self.root = str(manifest.root).rstrip("/")
        self.plain: dict[str, bool] = {self.root: True}  # folder -> no symbolic link between it and the root

    def check(self, value: str, row: int, column: str) -> list[Problem]:
        parts = value.split("/")
        if value.startswith("/") or "\0" in value or any(part in ("", ".", "..") for part in parts):
            return _check_path(self.manifest, value, row, column, self.check_files)
        folder = "/".join([self.root, *parts[:-1]])
        if not self._plain(folder):
            return _check_path(self.manifest, value, row, column, self.check_files)
        full = f"{folder}/{parts[-1]}"
        try:
            mode = os.lstat(full).st_mode
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                return _check_path(self.manifest, value, row, column, self.check_files)  # it words the error
            return [Problem(row, column, f"file not found: {value} (looked for {full})")] if self.check_files else []
        if stat.S_ISLNK(mode):
            return _check_path(self.manifest, value, row, column, self.check_files)
        return _file_problems(value, mode, row, column) if self.check_files else []

    def _plain(self, folder: str) -> bool:
        known = self.plain.get(folder)
        if known is None:
            try:
                known = self._plain(folder.rpartition("/")[0]) and not stat.S_ISLNK(os.lstat(folder).st_mode)
            except OSError:
                known = True  # missing or not a folder: no link on the way, and the file is not found
            self.plain[folder] = known
        return known


def _check_path(manifest: Manifest, value: str, row: int, column: str, check_files: bool) -> list[Problem]:
    """The checks of one path through :meth:`Manifest.resolve` (every component) and ``stat``."""
    try:
        full = manifest.resolve(value)
    except PathError as err:
        return [Problem(row, column, str(err))]
    if not check_files:
        return []
    try:
        mode = full.stat().st_mode
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return [Problem(row, column, f"file not found: {value} (looked for {full})")]
        return [Problem(row, column, f"{value} cannot be opened ({os.strerror(err.errno or 0)})")]
    return _file_problems(value, mode, row, column)


def _file_problems(value: str, mode: int, row: int, column: str) -> list[Problem]:
    """A folder or a FIFO, socket or device where an image file belongs."""
    if stat.S_ISDIR(mode):
        return [Problem(row, column, f"{value} is a folder, not an image file; give the NIfTI file inside it")]
    if not stat.S_ISREG(mode):
        return [Problem(row, column, f"{value} is not a regular file (a FIFO, socket or device); give a NIfTI file")]
    return []


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def summarize(manifest: Manifest) -> dict[str, pd.DataFrame]:
    """Tables for ``umbif manifest summary``.

    Returns:
        ``sites``: exams, patients and per-sequence availability per site (plus a total row);
        ``labels``: for each label, the count of each value and of missing.
    """
    table = manifest.table
    has = table[list(SEQUENCES)].ne("")
    per_site = pd.DataFrame({"site": table["site"].replace("", "(none)"), "patient": table["patient_id"]})
    per_site = pd.concat([per_site, has], axis=1)
    grouped = per_site.groupby("site", sort=True)
    sites = pd.DataFrame({"exams": grouped.size(), "patients": grouped["patient"].nunique()})
    for sequence in SEQUENCES:
        sites[sequence] = grouped[sequence].sum().astype(int)
    total = pd.DataFrame(
        {"exams": [len(table)], "patients": [table["patient_id"].nunique()]}
        | {s: [int(has[s].sum())] for s in SEQUENCES},
        index=["total"],
    )
    sites = pd.concat([sites, total])
    sites.index.name = "site"
    label_rows = []
    for column, (positive, negative) in LABELS.items():
        counts = table[column].value_counts()
        other = int(counts.drop([positive, negative, ""], errors="ignore").sum())
        label_rows.append(
            {
                "label": column,
                "classes": f"{positive} / {negative}",
                "positive": int(counts.get(positive, 0)),
                "negative": int(counts.get(negative, 0)),
                "missing": int(counts.get("", 0)),
                "invalid": other,
            }
        )
    labels = pd.DataFrame(label_rows)
    return {"sites": sites, "labels": labels}
