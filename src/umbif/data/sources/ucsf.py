"""The UCSF-PDGM layout (UCSF Preoperative Diffuse Glioma MRI, TCIA; Calabrese et al. 2022).

::

    UCSF-PDGM-v3/UCSF-PDGM-0004_nifti/UCSF-PDGM-0004_{T1,T1c,T2,FLAIR}.nii.gz       t1, t1c, t2, flair
                                      UCSF-PDGM-0004_{T1,T1c,T2,FLAIR}_bias.nii.gz  the same, N4 bias-corrected
                                      UCSF-PDGM-0004_tumor_segmentation.nii.gz      seg
                                      UCSF-PDGM-0004_brain_segmentation.nii.gz      brain_mask
                                      UCSF-PDGM-0004_{ADC,DWI,SWI,ASL,DTI_eddy_*,brain_parenchyma_segmentation}
                                                                                    known maps, not used
    UCSF-PDGM-0433_FU007d_nifti/...   follow-up exam of patient 0433, 7 days after its baseline
    UCSF-PDGM-metadata_v2.csv         ID (UCSF-PDGM-004: three digits), IDH, MGMT status, 1p/19q, ...

patient_id is ``UCSF-PDGM-0004`` (four digits, whatever the folder or table wrote), exam_id the folder
name without ``_nifti``; timepoint 0 for the baseline, 1, 2, ... for follow-ups in order of days.

The second half of this module holds what the public-data-set adapters (``ucsf``, ``upenn``, ``egd``,
``lumiere``) share: walking the NIfTI files, reading a data set's own clinical table, and turning its
label columns into manifest labels per subject with every unusable cell reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import cast

import pandas as pd

from umbif.data.manifest import LABELS
from umbif.data.sequences import nifti_stem
from umbif.data.sources.common import IngestReport, ingest_report, natural_key

SITE = "UCSF-PDGM"
PATIENT_ID = "UCSF-PDGM-{:04d}"
EXAM_FOLDER = re.compile(r"UCSF-PDGM-(?P<number>\d+)(?:_FU(?P<days>\d+)d)?_nifti", re.IGNORECASE)
EXAM_FILE = re.compile(r"UCSF-PDGM-(?P<number>\d+)(?:_FU(?P<days>\d+)d)?_(?P<kind>.+)", re.IGNORECASE)
SUBJECT_ID = re.compile(r"UCSF-PDGM-(?P<number>\d+)(?:_FU(?P<days>\d+)d)?", re.IGNORECASE)
SEQUENCE_KINDS: dict[str, str] = {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "flair"}  # file kind -> target
MASK_KINDS: dict[str, str] = {"tumor_segmentation": "seg", "brain_segmentation": "brain_mask"}
# Maps of the release that are not structural inputs; skipped without a report.
UNUSED_KINDS: frozenset[str] = frozenset(
    {"adc", "asl", "dwi", "dwi_bias", "swi", "swi_bias", "brain_parenchyma_segmentation"}
)
UNUSED_PREFIXES: tuple[str, ...] = ("dti_",)  # DTI_eddy_FA, _MD, _L1, _L2, _L3, _noreg, ...
LABEL_COLUMNS: dict[str, str] = {"idh": "IDH", "mgmt": "MGMT status", "codeletion_1p19q": "1p/19q"}

# UCSF-PDGM's own values, looked up after lower-casing and collapsing spaces.
_UCSF_VALUES: dict[str, dict[str, str]] = {
    "idh": {"wildtype": "wildtype", "mutated (nos)": "mutant", "mutated": "mutant"},
    "mgmt": {"positive": "methylated", "negative": "unmethylated", "indeterminate": ""},
    # "relative co-deletion" is FISH's relative 1p/19q loss against polysomy, not the whole-arm
    # codeletion that defines oligodendroglioma: left empty rather than called either class.
    "codeletion_1p19q": {"co-deletion": "codeleted", "intact": "intact", "relative co-deletion": ""},
}
# A named IDH1/IDH2 protein change (IDH1 p.R132H, IDH2 p.Arg172Trp) is a mutation.
IDH_VARIANT = re.compile(r"idh[12] p\.(r|arg)1[37]2\w+")


def ucsf_label(label: str, value: str) -> str | None:
    """The manifest class of a UCSF-PDGM metadata cell: ``ucsf_label("idh", "IDH1 p.R132H") == "mutant"``.

    Args:
        label: ``idh``, ``mgmt`` or ``codeletion_1p19q``.
        value: the cell as written in the metadata table.

    Returns:
        A class of ``LABELS[label]``, "" for a blank, unknown or deliberately unused value
        (``indeterminate``, ``relative co-deletion``), or None when the value is not recognised.
    """
    if is_blank(value):
        return ""
    key = cell_key(value)
    if label == "idh" and IDH_VARIANT.fullmatch(key):
        return "mutant"
    return _UCSF_VALUES[label].get(key)


def ingest_ucsf(
    root: str | Path,
    labels: str | Path | None = None,
    site: str = SITE,
    bias_corrected: bool = False,
) -> IngestReport:
    """Build a manifest from a UCSF-PDGM download (exam folders searched recursively under ``root``).

    Args:
        root: the data folder; manifest paths are relative to it.
        labels: the data set's metadata table (``UCSF-PDGM-metadata_v2.csv`` or a later version).
        site: site of every exam.
        bias_corrected: use the N4 bias-corrected ``*_bias`` images instead of the plain ones.

    Returns:
        The manifest and the problems: files and folders not recognised, a missing preferred
        image (the other variant is used), metadata cells not recognised, subjects without exams.

    Raises:
        FileNotFoundError: ``root`` or ``labels`` does not exist.
        ValueError: no NIfTI file or no exam under ``root``, or a metadata table without ``ID``.
    """
    root = Path(root).absolute()
    files = nifti_files(root)
    problems: list[str] = []
    rows = []
    follow_ups: dict[str, list[tuple[int, dict[str, object]]]] = {}  # patient -> (days, row)
    for folder, paths in _by_folder(files).items():
        where = _relative(folder, root)
        match = EXAM_FOLDER.fullmatch(folder.name)
        if match is None:
            problems.append(
                f"{where}: not a UCSF-PDGM exam folder (UCSF-PDGM-0004_nifti); its {len(paths)} NIfTI files skipped"
            )
            continue
        placed, found = _place_ucsf(paths, match, where, bias_corrected)
        problems += found
        if not any(target in placed for target in SEQUENCE_KINDS.values()):
            problems.append(f"{where}: no T1, T1c, T2 or FLAIR image; folder skipped")
            continue
        patient = PATIENT_ID.format(int(match["number"]))
        days = match["days"]
        row: dict[str, object] = {
            "exam_id": patient + (f"_FU{days}d" if days else ""),
            "patient_id": patient,
            "site": site,
            "timepoint": 0,
            **placed,
        }
        rows.append(row)
        if days:
            follow_ups.setdefault(patient, []).append((int(days), row))
    for exams in follow_ups.values():  # a patient's follow-ups: timepoint 1, 2, ... in order of days
        for rank, (_, row) in enumerate(sorted(exams, key=lambda exam: exam[0]), start=1):
            row["timepoint"] = rank
    rows.sort(key=lambda row: (str(row["patient_id"]), cast(int, row["timepoint"])))
    if labels is not None and rows:
        problems += _join_ucsf_labels(rows, labels)
    return ingest_report(rows, root, problems)


def _place_ucsf(
    paths: list[Path], folder: re.Match[str], where: str, bias_corrected: bool
) -> tuple[dict[str, Path], list[str]]:
    """The images and masks of one exam folder, the preferred (plain or bias-corrected) variant first."""
    claims: dict[str, list[Path]] = {}
    variants: dict[str, dict[bool, Path]] = {}  # target -> {is_bias_corrected: file}
    problems = []
    for path in paths:
        match = EXAM_FILE.fullmatch(nifti_stem(path) or "")
        if match is None:
            problems.append(f"{where}: {path.name}: not named like a UCSF-PDGM image (UCSF-PDGM-0004_T1c); skipped")
            continue
        if (int(match["number"]), match["days"]) != (int(folder["number"]), folder["days"]):
            problems.append(f"{where}: {path.name}: names another exam than its folder; skipped")
            continue
        kind = match["kind"].lower()
        base = kind.removesuffix("_bias")
        if base in SEQUENCE_KINDS:
            variants.setdefault(SEQUENCE_KINDS[base], {})[kind != base] = path
        elif kind in MASK_KINDS:
            claims.setdefault(MASK_KINDS[kind], []).append(path)
        elif kind not in UNUSED_KINDS and not kind.startswith(UNUSED_PREFIXES):
            problems.append(f"{where}: {path.name}: map {match['kind']!r} not recognised; skipped")
    for target, found in variants.items():
        chosen = found.get(bias_corrected)
        if chosen is None:
            chosen = found[not bias_corrected]
            wanted = "bias-corrected" if bias_corrected else "plain"
            problems.append(f"{where}: no {wanted} {target} image; {chosen.name} used instead")
        claims[target] = [chosen]
    placed, several = place_claims(claims, where)
    return placed, problems + several


def _join_ucsf_labels(rows: list[dict[str, object]], labels: str | Path) -> list[str]:
    """Set idh, mgmt and codeletion_1p19q of every exam from the metadata table; returns its problems."""
    frame = read_table(labels, "ID")
    name = Path(labels).name
    columns, problems = label_columns(frame, name, LABEL_COLUMNS, ucsf_label)
    found, more = table_labels(frame, name, "ID", _patient_of_subject, columns)
    apply_labels(rows, found)
    return problems + more + unmatched(name, found, {str(row["patient_id"]) for row in rows}, "patient")


def _patient_of_subject(value: str) -> str | None:
    """``UCSF-PDGM-004`` and ``UCSF-PDGM-0391_FU016d`` -> ``UCSF-PDGM-0004``, ``UCSF-PDGM-0391``."""
    match = SUBJECT_ID.fullmatch(value.strip())
    return PATIENT_ID.format(int(match["number"])) if match else None


# ------------------------------------------------------------------ shared by ucsf, upenn, egd, lumiere
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


def _by_folder(files: list[Path]) -> dict[Path, list[Path]]:
    folders: dict[Path, list[Path]] = {}
    for path in files:
        folders.setdefault(path.parent, []).append(path)
    return folders


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() or "."


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
