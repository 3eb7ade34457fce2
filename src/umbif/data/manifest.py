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
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from umbif import SEQUENCES
from umbif.data.sequences import MASK_KINDS
from umbif.utils import atomic_write

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


class ManifestError(ValueError):
    """A manifest that cannot be used; the message lists every problem found."""


class PathEscapeError(ValueError):
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


class Manifest:
    """A manifest table plus the root its paths are relative to.

    Args:
        table: one row per exam; missing standard columns are added empty.
        root: folder the relative paths start from.
    """

    def __init__(self, table: pd.DataFrame, root: str | Path):
        table = _blank_to_str(table.reset_index(drop=True))
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
        """Read a ``.csv`` or ``.parquet`` manifest; ``root`` defaults to the file's folder."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} does not exist; build one with `umbif ingest`")
        if path.suffix.lower() == ".parquet":
            table = pd.read_parquet(path)
        elif path.suffix.lower() == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            raise ValueError(f"{path}: a manifest must end in .csv or .parquet")
        return cls(table, path.parent if root is None else root)

    def write(self, path: str | Path) -> None:
        """Write as CSV or Parquet (by suffix), atomically."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ValueError(f"{path}: a manifest must end in .csv or .parquet")
        if suffix == ".csv":
            buffer = io.StringIO()
            self.table.to_csv(buffer, index=False)
            with atomic_write(path, "w") as handle:
                handle.write(buffer.getvalue())
        else:
            with atomic_write(path, "wb") as handle:
                self.table.astype(str).to_parquet(handle, index=False)

    def resolve(self, value: str) -> Path:
        """Absolute path of a manifest path value.

        Raises:
            PathEscapeError: the path (after following symlinks) is outside the root.
        """
        candidate = Path(value)
        full = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        if not full.is_relative_to(self.root):
            raise PathEscapeError(f"path {value!r} leads outside the manifest root {self.root}")
        return full

    def relocate(self, root: str | Path) -> Manifest:
        """The same exams with paths rewritten relative to a new root (e.g. where the file goes).

        Raises:
            PathEscapeError: a file is not under the new root.
        """
        new_root = Path(root).resolve()
        table = self.table.copy()
        for column in PATH_COLUMNS:
            for index, value in table[column].items():
                if not value:
                    continue
                full = self.resolve(value)
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


def _parse_timepoint(value: str) -> float | str | None:
    """A number, None when empty, or the offending text when it is not a number."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def validate(manifest: Manifest, check_files: bool = True) -> list[Problem]:
    """Every problem of a manifest, in row order; an empty list means it is usable.

    Errors: missing required column, empty exam/patient id, duplicate exam_id, exam without any
    sequence, path outside the root, missing file (``check_files``), label value outside its set,
    non-numeric timepoint. Warnings: empty site, 1p/19q codeleted in an IDH-wildtype tumour,
    two exams of one patient at the same timepoint.
    """
    table = manifest.table
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    timepoints: dict[tuple[str, float], int] = {}
    for index, row in enumerate(table.itertuples(index=False)):
        values = row._asdict()
        n = index + 1
        for column in REQUIRED:
            if not values[column].strip():
                problems.append(Problem(n, column, f"{column} is empty"))
        exam_id = values["exam_id"]
        if exam_id:
            if exam_id in seen:
                problems.append(Problem(n, "exam_id", f"duplicate exam_id {exam_id!r} (first in row {seen[exam_id]})"))
            else:
                seen[exam_id] = n
        if not values["site"]:
            problems.append(Problem(n, "site", "site is empty; leave-one-site-out will group it as ''", "warning"))
        timepoint = _parse_timepoint(values["timepoint"])
        if isinstance(timepoint, str):
            problems.append(Problem(n, "timepoint", f"timepoint {timepoint!r} is not a number"))
        elif timepoint is not None and values["patient_id"]:
            key = (values["patient_id"], timepoint)
            if key in timepoints:
                problems.append(
                    Problem(n, "timepoint", f"same patient and timepoint as row {timepoints[key]}", "warning")
                )
            timepoints.setdefault(key, n)
        if not any(values[s] for s in SEQUENCES):
            problems.append(Problem(n, None, f"exam has no sequence (none of {', '.join(SEQUENCES)} is given)"))
        for column in PATH_COLUMNS:
            if values[column]:
                problems.extend(_check_path(manifest, values[column], n, column, check_files))
        for column, allowed in LABELS.items():
            value = values[column]
            if value and value not in allowed:
                problems.append(Problem(n, column, f"unknown label {value!r}; allowed: {', '.join(allowed)} or empty"))
        if values["codeletion_1p19q"] == "codeleted" and values["idh"] == "wildtype":
            problems.append(
                Problem(
                    n,
                    "codeletion_1p19q",
                    "1p/19q codeleted but IDH wildtype: not a WHO 2021 entity",
                    "warning",
                )
            )
    return problems


def _check_path(manifest: Manifest, value: str, row: int, column: str, check_files: bool) -> list[Problem]:
    try:
        full = manifest.resolve(value)
    except PathEscapeError as err:
        return [Problem(row, column, str(err))]
    if check_files and not full.is_file():
        return [Problem(row, column, f"file not found: {value} (looked for {full})")]
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
