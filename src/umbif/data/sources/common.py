"""What every ingest adapter shares: the walk that finds exam folders and places their files, the
step from rows to a :class:`~umbif.data.manifest.Manifest`, and the join of a labels CSV.

An adapter only decides how a folder's path becomes ``exam_id``, ``patient_id`` and ``timepoint``;
everything that can go wrong with a file or a label row is collected as a problem, never guessed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from umbif import SEQUENCES
from umbif.data.manifest import COLUMNS, LABELS, PATH_COLUMNS, Manifest, errors, validate
from umbif.data.sequences import AliasTable, assign_files, nifti_stem

JOIN_ON: dict[str, str] = {"patient": "patient_id", "exam": "exam_id"}  # --join-on value -> manifest column
_MAX_LISTED = 10  # ids listed in one problem line before "..."

# Label synonyms, looked up after lower-casing and turning runs of spaces, "_" and "-" into one space.
_BLANK: frozenset[str] = frozenset({"", "na", "n/a", "nan", "none", "unknown", "indeterminate", "not available"})
SYNONYMS: dict[str, dict[str, str]] = {
    "idh": dict.fromkeys(("mutant", "mut", "mutated", "idh mutant", "idh mutated", "1", "positive", "true"), "mutant")
    | dict.fromkeys(("wildtype", "wt", "wild type", "idh wildtype", "idh wt", "0", "negative", "false"), "wildtype"),
    "mgmt": dict.fromkeys(("methylated", "meth", "1", "positive"), "methylated")
    | dict.fromkeys(("unmethylated", "unmeth", "0", "negative"), "unmethylated"),
    "codeletion_1p19q": dict.fromkeys(
        ("codeleted", "co deleted", "codel", "codeletion", "co deletion", "1", "yes", "true"), "codeleted"
    )
    | dict.fromkeys(("intact", "non codeleted", "not codeleted", "0", "no", "false"), "intact"),
    "outcome": dict.fromkeys(("progression", "pd", "true progression", "tp", "1"), "progression")
    | dict.fromkeys(
        ("treatment effect", "pseudoprogression", "pseudo progression", "te", "psp", "0"), "treatment_effect"
    ),
}
assert set(SYNONYMS) == set(LABELS)
_SEPARATORS = re.compile(r"[\s_\-]+")


@dataclass
class IngestReport:
    """What an adapter built, and everything it could not use (one line per file, folder or label row)."""

    manifest: Manifest
    problems: list[str]

    def write(self, target: str | Path) -> tuple[Manifest, int]:
        """Write the manifest to ``target`` with paths relative to its folder, and validate it.

        Returns:
            ``(the written manifest, the number of validation errors)``.

        Raises:
            PathEscapeError: an image lies outside ``target``'s folder (the manifest must sit in or above it).
        """
        target = Path(target)
        manifest = self.manifest.relocate(target.parent)
        manifest.write(target)
        return manifest, len(errors(validate(manifest)))


@dataclass(frozen=True)
class ExamFolder:
    """A folder that directly holds NIfTI files, with the files placed on canonical targets."""

    path: Path  # absolute
    parts: tuple[str, ...]  # the folder relative to the root, split; () when the root itself is the exam
    files: dict[str, Path]  # canonical target (t1, ..., brain_mask, seg) -> absolute file

    @property
    def relative(self) -> str:
        """The folder relative to the root, posix, "." for the root itself."""
        return "/".join(self.parts) or "."


def natural_key(text: str) -> tuple[str | int, ...]:
    """Sort key that orders digit runs by value: ``visit2`` before ``visit10``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def site_name(root: str | Path) -> str:
    """Default site of an ingested folder: its own name (``.`` resolved)."""
    return Path(root).resolve().name


def find_exam_folders(root: str | Path, table: AliasTable) -> tuple[list[ExamFolder], list[str]]:
    """Every folder under ``root`` (itself included, recursively) that directly holds NIfTI files.

    Hidden files and folders (``.git``, macOS ``._`` copies) are skipped. A NIfTI name that is not a
    regular file (a FIFO, a broken link or a link loop) is reported and skipped. Files are placed with
    :func:`~umbif.data.sequences.assign_files`; its problems come back prefixed with the folder.
    A folder none of whose files is a sequence (t1, t1c, t2, flair) is reported and left out.

    Returns:
        The exam folders in natural order of their relative path, and the problems found.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no NIfTI file anywhere under ``root``.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the folder that holds the exams")
    exams: list[ExamFolder] = []
    problems: list[str] = []
    any_nifti = False
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        niftis = [Path(folder, f) for f in filenames if not f.startswith(".") and nifti_stem(f) is not None]
        if not niftis:
            continue
        any_nifti = True
        parts = Path(folder).relative_to(root).parts
        for path in niftis:
            if not path.is_file():  # follows links: False for a FIFO, a broken link, a link loop
                problems.append(
                    f"{'/'.join(parts) or '.'}: {path.name} is not a regular file (a FIFO, a broken link or a "
                    "link loop); skipped"
                )
        placed = assign_files([path for path in niftis if path.is_file()], table)
        exam = ExamFolder(Path(folder), parts, placed.files)
        problems.extend(f"{exam.relative}: {problem}" for problem in placed.problems)
        if not any(s in exam.files for s in SEQUENCES):
            problems.append(f"{exam.relative}: no {', '.join(SEQUENCES)} among its NIfTI files; folder skipped")
            continue
        exams.append(exam)
    if not any_nifti:
        raise ValueError(
            f"no NIfTI file (.nii, .nii.gz) under {root}; convert DICOM series first (e.g. with dcm2niix) "
            "or point at the folder that holds the NIfTI files"
        )
    exams.sort(key=lambda exam: tuple(natural_key(p) for p in exam.parts))
    return exams, problems


def manifest_from_rows(rows: Iterable[Mapping[str, object]], root: str | Path) -> Manifest:
    """A manifest from one dict per exam whose path columns hold absolute paths under ``root``.

    Paths become relative to ``root`` (posix) without following symlinks, so a link that leaves
    the root is reported by :func:`~umbif.data.manifest.validate` on its own row.
    """
    root = Path(root).absolute()
    table = pd.DataFrame(list(rows))
    for column in PATH_COLUMNS:
        if column in table.columns:
            table[column] = [
                Path(value).relative_to(root).as_posix() if isinstance(value, Path | str) and value else ""
                for value in table[column]
            ]
    return Manifest(table, root)


def ingest_report(
    rows: list[dict[str, object]],
    root: str | Path,
    problems: list[str],
    labels: str | Path | None = None,
    subject_column: str = "subject",
    join_on: str = "patient",
) -> IngestReport:
    """The report of an adapter: its rows as a manifest, with the labels CSV joined when given.

    Raises:
        ValueError: no exam could be built (the message lists the first problems), or a bad labels CSV.
    """
    if not rows:
        listed = "; ".join(problems[:5]) or "no exam folder found"
        raise ValueError(f"no exam could be built from {root}: {listed}")
    manifest = manifest_from_rows(rows, root)
    if labels is None:
        return IngestReport(manifest, problems)
    table, label_problems = join_labels(manifest.table, labels, subject_column, join_on)
    return IngestReport(Manifest(table, manifest.root), problems + label_problems)


def _subject_key(value: str) -> str:
    """Id used for matching: trimmed, and leading zeros dropped when all digits (``00002`` == ``2``)."""
    value = value.strip()
    return value.lstrip("0") or "0" if value.isdigit() else value


def normalise_label(column: str, value: str) -> str | None:
    """The manifest value of a label cell: a class of ``LABELS[column]``, "" for blank/unknown,
    or None when the value is not recognised."""
    key = _SEPARATORS.sub(" ", value.strip().lower()).strip()
    if key in _BLANK:
        return ""
    return SYNONYMS[column].get(key)


def join_labels(
    table: pd.DataFrame, labels_csv: str | Path, subject_column: str = "subject", join_on: str = "patient"
) -> tuple[pd.DataFrame, list[str]]:
    """Join a labels CSV onto a manifest table by patient or exam id.

    Label columns (``idh``, ``mgmt``, ``codeletion_1p19q``, ``outcome``; any case) are mapped to
    their classes through :data:`SYNONYMS`; a value that maps to nothing is left empty and reported.
    A ``site`` column overrides the site where filled; other columns are kept as free columns.
    Ids that are all digits match without leading zeros (RSNA-MGMT ``2`` matches BraTS ``00002``).

    Args:
        table: manifest table (``Manifest.table``), not modified.
        labels_csv: CSV with one row per subject.
        subject_column: the CSV column holding the patient or exam id.
        join_on: ``"patient"`` (``patient_id``) or ``"exam"`` (``exam_id``).

    Returns:
        The joined table and the problems: unknown label values (row, column, value), duplicate
        subject ids, subjects that match no exam, CSV columns that would overwrite ingest columns.

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: ``join_on`` is unknown or the CSV has no ``subject_column``.
    """
    labels_csv = Path(labels_csv)
    if join_on not in JOIN_ON:
        raise ValueError(f"join_on must be one of {', '.join(JOIN_ON)}, got {join_on!r}")
    if not labels_csv.is_file():
        raise FileNotFoundError(f"labels CSV {labels_csv} does not exist")
    frame = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    if subject_column not in frame.columns:
        raise ValueError(
            f"{labels_csv}: no column {subject_column!r}; columns found: {', '.join(map(str, frame.columns))}. "
            "Name the subject id column with --subject-column"
        )
    name = labels_csv.name
    problems: list[str] = []
    # CSV column -> manifest column; label columns match in any case, ingest-owned columns are refused
    targets: dict[str, str] = {}
    for column in frame.columns:
        if column == subject_column:
            continue
        lowered = column.strip().lower()
        if lowered in LABELS or lowered == "site":
            targets[column] = lowered
        elif column in COLUMNS:
            problems.append(f"{name}: column {column!r} ignored; ingest sets it from the files")
        else:
            targets[column] = column

    rows: dict[str, dict[str, str]] = {}
    first_row: dict[str, int] = {}
    conflicting: set[str] = set()
    for index, record in enumerate(frame.to_dict("records"), start=1):
        values = {}
        for column, target in targets.items():
            value = record[column]
            if target in LABELS:
                mapped = normalise_label(target, value)
                if mapped is None:
                    allowed = " / ".join(LABELS[target])
                    problems.append(
                        f"{name} row {index}, column {column}: value {value!r} not recognised ({allowed}); left empty"
                    )
                value = mapped or ""
            values[target] = value.strip() if target == "site" else value
        key = _subject_key(record[subject_column])
        if key in rows:
            same = rows[key] == values
            problems.append(
                f"{name} row {index}: subject {record[subject_column]!r} also in row {first_row[key]}"
                + ("" if same else " with other values; its labels are not used")
            )
            if not same:
                conflicting.add(key)
            continue
        rows[key] = values
        first_row[key] = index

    ids = table[JOIN_ON[join_on]].map(_subject_key)
    known = set(ids)
    unmatched = [frame[subject_column].iloc[first_row[k] - 1] for k in rows if k not in known]
    if unmatched:
        listed = ", ".join(unmatched[:_MAX_LISTED]) + (", ..." if len(unmatched) > _MAX_LISTED else "")
        problems.append(f"{name}: {len(unmatched)} subjects match no {join_on}: {listed}")

    joined = table.copy()
    for target in dict.fromkeys(targets.values()):
        current = joined[target] if target in joined.columns else pd.Series("", index=joined.index)
        found = [rows[k][target] if k in rows and k not in conflicting else "" for k in ids]
        if target == "site":  # an empty site cell keeps the ingest's site
            joined[target] = [f or c for f, c in zip(found, current, strict=True)]
        else:
            joined[target] = found
    return joined, problems


# ------------------------------------------------------------------------------------------------
# Shared by the public-data-set adapters (ucsf, upenn, egd, lumiere): walking the NIfTI files, reading
# a data set's own clinical table, turning its label columns into manifest labels per subject.


Normaliser = Callable[[str, str], str | None]  # (label, cell) -> class, "" (blank/unused) or None (not recognised)
_BLANK_CELLS: frozenset[str] = frozenset({"", "na", "n/a", "nan", "none", "not available", "unknown"})


def cell_key(value: str) -> str:
    """Lookup key of a table cell: trimmed, lower case, runs of spaces as one."""
    return " ".join(value.split()).lower()


def is_blank(value: str) -> bool:
    """True for an empty cell and the usual spellings of "not available"."""
    return cell_key(value) in _BLANK_CELLS


def nifti_files(root: Path) -> list[Path]:
    """Every NIfTI file under ``root`` (hidden files and folders skipped), in natural order of their path.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no NIfTI file under it.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the folder that holds the data set")
    found = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(folder, f) for f in filenames if not f.startswith(".") and nifti_stem(f) is not None]
    if not found:
        raise ValueError(f"no NIfTI file (.nii, .nii.gz) under {root}; point at the folder that holds the data set")
    return sorted(found, key=lambda path: tuple(natural_key(part) for part in path.relative_to(root).parts))


def place_claims(claims: Mapping[str, list[Path]], where: str) -> tuple[dict[str, Path], list[str]]:
    """Target -> file where exactly one file claims the target; a target claimed twice gets none, reported."""
    placed, problems = {}, []
    for target, paths in claims.items():
        if len(paths) == 1:
            placed[target] = paths[0]
        else:
            names = ", ".join(path.name for path in paths)
            problems.append(f"{where}: several files for {target} ({names}); none used, keep one")
    return placed, problems


def read_table(path: str | Path, id_column: str) -> pd.DataFrame:
    """A data set's clinical table as text cells: ``.tsv``/``.txt`` tab-separated, anything else CSV.

    Header names are trimmed and a UTF-8 byte-order mark is dropped.

    Raises:
        FileNotFoundError: the table does not exist.
        ValueError: it has no ``id_column``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels table {path} does not exist")
    separator = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    frame = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    frame.columns = [str(column).strip() for column in frame.columns]
    if id_column not in frame.columns:
        raise ValueError(
            f"{path}: no column {id_column!r}; columns found: {', '.join(frame.columns)}. "
            "Give the data set's own table as it was downloaded"
        )
    return frame


def find_column(frame: pd.DataFrame, *names: str) -> str | None:
    """The first of ``names`` among the table's columns, compared without case; None when none is there."""
    by_key = {column.lower(): column for column in frame.columns}
    return next((by_key[name.lower()] for name in names if name.lower() in by_key), None)


def label_columns(
    frame: pd.DataFrame,
    name: str,
    wanted: Mapping[str, str | tuple[str, ...]],
    normalise: Normaliser,
    optional: Iterable[str] = (),
) -> tuple[dict[str, tuple[str, Callable[[str], str | None]]], list[str]]:
    """Label -> (table column, cell normaliser) for the wanted columns (any of their names, any case)
    the table has; a missing column is reported unless its label is ``optional``."""
    columns: dict[str, tuple[str, Callable[[str], str | None]]] = {}
    problems = []
    for label, names in wanted.items():
        names = (names,) if isinstance(names, str) else names
        column = find_column(frame, *names)
        if column is None:
            if label not in optional:
                problems.append(f"{name}: no column {names[0]!r}; {label} left empty")
        else:
            columns[label] = (column, lambda value, label=label: normalise(label, value))
    return columns, problems


def table_labels(
    frame: pd.DataFrame,
    name: str,
    id_column: str,
    key_of: Callable[[str], str | None],
    columns: Mapping[str, tuple[str, Callable[[str], str | None]]],
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Labels per subject from a data set's table, each cell through its column's normaliser.

    Rows of one subject (several scans, a follow-up row) are merged: a label takes the one class
    its rows agree on; rows that disagree leave it empty and are reported. Cells that are not
    recognised are reported with row, column and value (row 1 is the first data row).

    Args:
        frame: the table, all cells text (:func:`read_table`).
        name: how problem lines name the table (its file name).
        id_column: the column with the subject id.
        key_of: subject id as written -> the key the adapter joins on, None when it is not an id.
        columns: manifest label -> (table column, normaliser returning a class, "" or None).

    Returns:
        Key -> {label: class or ""}, and the problems.
    """
    seen: dict[str, dict[str, dict[str, list[int]]]] = {}  # key -> label -> class -> rows
    problems = []
    for index, record in enumerate(frame.to_dict("records"), start=1):
        key = key_of(record[id_column])
        if key is None:
            problems.append(f"{name} row {index}: {id_column} {record[id_column]!r} is not a subject id; row skipped")
            continue
        classes = seen.setdefault(key, {label: {} for label in columns})
        for label, (column, normalise) in columns.items():
            value = normalise(record[column])
            if value is None:
                allowed = " / ".join(LABELS[label])
                problems.append(
                    f"{name} row {index}, column {column}: value {record[column]!r} not recognised ({allowed}); "
                    "left empty"
                )
            elif value:
                classes[label].setdefault(value, []).append(index)
    labels: dict[str, dict[str, str]] = {}
    for key, classes in seen.items():
        labels[key] = {}
        for label, rows_of in classes.items():
            if len(rows_of) > 1:
                listed = ", ".join(f"{value} in row {rows[0]}" for value, rows in rows_of.items())
                problems.append(f"{name}: rows of {key} disagree on {label} ({listed}); left empty")
            labels[key][label] = next(iter(rows_of)) if len(rows_of) == 1 else ""
    return labels, problems


def apply_labels(rows: Iterable[dict[str, object]], labels: Mapping[str, Mapping[str, str]]) -> None:
    """Copy each patient's labels onto its exam rows."""
    for row in rows:
        row.update(labels.get(str(row["patient_id"]), {}))


def unmatched(name: str, keys: Iterable[str], known: set[str], what: str, most: int = 10) -> list[str]:
    """One problem line listing the table's subjects that match no exam, or none."""
    missing = [key for key in keys if key not in known]
    if not missing:
        return []
    listed = ", ".join(missing[:most]) + (", ..." if len(missing) > most else "")
    return [f"{name}: {len(missing)} subjects match no {what}: {listed}"]
