"""The RSNA-MICCAI Brain Tumor Radiogenomic Classification layout (BraTS 2021 MGMT): one DICOM series
per sequence folder, and MGMT promoter methylation labels.

::

    ROOT/train_labels.csv                     BraTS21ID (an integer: 12 is case 00012), MGMT_value (0 / 1)
    ROOT/train/00012/FLAIR/Image-1.dcm ...    -> OUT/rsna-00012/flair.nii.gz
                    /T1w/ /T1wCE/ /T2w/       -> t1.nii.gz, t1c.nii.gz, t2.nii.gz
    ROOT/test/00001/...                       (no labels; the free column rsna_split says train or test)

The folder names decide the sequence; the slices of a folder are ordered by position along the
slice normal (their names sort as Image-1, Image-10, Image-2, ... and say nothing about position)
and converted with the geometry checks of :mod:`umbif.data.dicom_io`. ``patient_id`` is the case
number, as the BraTS adapter gives BraTS2021_00012, so both data sets keep a patient in one fold;
``exam_id`` is ``rsna-00012``. Case numbers are public, so pseudonymising them is optional.
Cases 00109, 00123 and 00709 are skipped: the organisers listed them as having unexpected issues.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from umbif import SEQUENCES
from umbif.data.dicom_io import DicomError, GeometryError, convert, read_headers
from umbif.data.pseudonym import Pseudonymiser
from umbif.data.sources.common import IngestReport, manifest_from_rows

SEQUENCE_FOLDERS: dict[str, str] = {"flair": "flair", "t1w": "t1", "t1wce": "t1c", "t2w": "t2"}  # lower-cased
KNOWN_BAD: tuple[str, ...] = ("00109", "00123", "00709")  # excluded by the organisers (competition forum)
SPLITS: tuple[str, ...] = ("train", "test")
SITE = "RSNA-MGMT"  # default site of every exam (never the folder's name, as for the other public data sets)
LABELS_FILE = "train_labels.csv"
KNOWN_FILES = frozenset({LABELS_FILE, "sample_submission.csv"})
_CASE = re.compile(r"\d{5}")
_IMAGE = re.compile(r"Image-\d+\.dcm")
_MAX_LISTED = 10
MGMT_VALUES: dict[str, str] = {"1": "methylated", "0": "unmethylated"}  # MGMT_value -> manifest mgmt


def mgmt_label(value: str) -> str | None:
    """The manifest's ``mgmt`` of an RSNA ``MGMT_value``: 1 methylated, 0 unmethylated, "" when blank,
    None when not recognised (left empty and reported, never guessed)."""
    text = str(value).strip()
    if text.lower() in ("", "na", "nan"):
        return ""
    if re.fullmatch(r"[01](\.0*)?", text):
        return MGMT_VALUES[text[0]]
    return None


def case_id(value: str) -> str | None:
    """The 5-digit case of a ``BraTS21ID`` (read as an integer by most tools: ``12`` is ``00012``)."""
    text = str(value).strip()
    if re.fullmatch(r"\d{1,5}(\.0*)?", text):
        return f"{int(float(text)):05d}"
    return None


def read_labels(path: Path) -> tuple[dict[str, str], list[str]]:
    """Case -> mgmt from ``train_labels.csv``; unreadable rows and values are reported, never guessed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the CSV lacks ``BraTS21ID`` or ``MGMT_value``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV {path} does not exist")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if missing := {"BraTS21ID", "MGMT_value"} - set(frame.columns):
        raise ValueError(
            f"{path}: no column {', '.join(sorted(missing))}; columns found: {', '.join(map(str, frame.columns))}"
        )
    labels: dict[str, str] = {}
    first_row: dict[str, int] = {}
    problems = []
    for row, record in enumerate(frame.to_dict("records"), start=1):
        case = case_id(record["BraTS21ID"])
        if case is None:
            problems.append(f"{path.name} row {row}: BraTS21ID {record['BraTS21ID']!r} is not a case number; skipped")
            continue
        mgmt = mgmt_label(record["MGMT_value"])
        if mgmt is None:
            problems.append(
                f"{path.name} row {row}, column MGMT_value: value {record['MGMT_value']!r} not recognised (0 / 1); "
                "left empty"
            )
            mgmt = ""
        if case in labels:
            differs = labels[case] != mgmt
            problems.append(
                f"{path.name} row {row}: case {case} also in row {first_row[case]}"
                + (" with another value; its label is not used" if differs else "")
            )
            if differs:
                labels[case] = ""
            continue
        labels[case], first_row[case] = mgmt, row
    return labels, problems


def _layout(root: Path) -> tuple[Path, list[tuple[str, Path]], list[str]]:
    """The data set folder, its split folders and the entries that do not belong to the layout."""
    entries = [e for e in sorted(root.iterdir()) if not e.name.startswith(".")]
    if any(e.is_dir() and e.name in SPLITS for e in entries):
        extra = [e for e in entries if e.name not in SPLITS and e.name not in KNOWN_FILES]
        problems = [f"{e.name}: not part of the RSNA-MGMT layout (train/, test/, {LABELS_FILE})" for e in extra]
        return root, [(e.name, e) for e in entries if e.is_dir() and e.name in SPLITS], problems
    if any(e.is_dir() and _CASE.fullmatch(e.name) for e in entries):  # ROOT is train/ (or test/) itself
        return root.parent, [(root.name if root.name in SPLITS else "train", root)], []
    raise ValueError(
        f"{root} holds neither train/ nor 5-digit case folders; give the RSNA-MGMT folder "
        f"(with train/ and {LABELS_FILE}) or its train/ folder"
    )


def ingest_rsna(
    root: str | Path,
    out_dir: str | Path,
    pseudonymiser: Pseudonymiser | None = None,
    labels: str | Path | None = None,
    site: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Convert the RSNA-MGMT DICOM folders to NIfTI and build a manifest with the MGMT labels.

    Args:
        root: the data set folder (holding ``train/``, optionally ``test/``, and ``train_labels.csv``)
            or its ``train/`` folder.
        out_dir: where ``<exam>/<sequence>.nii.gz`` go; the manifest's root. A file already there is
            kept (an interrupted run resumes); delete ``out_dir`` to convert again.
        pseudonymiser: when given, patient and exam ids are keyed pseudonyms of the case number.
        labels: the labels CSV (default: ``train_labels.csv`` in the data set folder, when present).
        site: site of every exam (default :data:`SITE`).
        on_progress: called as ``(cases done, cases)``.

    Returns:
        The manifest and the problems: known bad cases, entries that are not part of the layout,
        series that could not be converted (and why), label rows not understood, labelled cases
        without a folder.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or ``labels`` does not exist.
        ValueError: not the RSNA-MGMT layout, a labels CSV without its columns, or no case converted.
    """
    root, out_dir = Path(root).absolute(), Path(out_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give the RSNA-MGMT folder that holds train/")
    data_root, splits, problems = _layout(root)
    labels_path = Path(labels) if labels else data_root / LABELS_FILE
    case_labels: dict[str, str] = {}
    if labels or labels_path.is_file():
        case_labels, label_problems = read_labels(labels_path)
        problems += label_problems
    site = site or SITE

    cases = []
    for split, folder in splits:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and _CASE.fullmatch(entry.name):
                cases.append((split, entry))
            else:
                problems.append(f"{entry.relative_to(root).as_posix()}: not a case folder (5 digits); ignored")
    rows = []
    for done, (split, folder) in enumerate(cases, start=1):
        if row := _case(folder, root, out_dir, pseudonymiser, problems):
            rows.append(row | {"site": site, "mgmt": case_labels.get(folder.name, ""), "rsna_split": split})
        if on_progress:
            on_progress(done, len(cases))

    seen = {folder.name for _, folder in cases}
    if unmatched := sorted(c for c in case_labels if c not in seen and c not in KNOWN_BAD):
        listed = ", ".join(unmatched[:_MAX_LISTED]) + (", ..." if len(unmatched) > _MAX_LISTED else "")
        problems.append(f"{labels_path.name}: {len(unmatched)} labelled cases have no folder: {listed}")
    if not rows:
        raise ValueError(f"no exam could be built from {root}: {'; '.join(problems[:5]) or 'no case folder found'}")
    return IngestReport(manifest_from_rows(rows, out_dir), problems)


def _case(
    folder: Path, root: Path, out_dir: Path, pseudonymiser: Pseudonymiser | None, problems: list[str]
) -> dict[str, object] | None:
    """One case's manifest row (ids and converted sequences), or None when nothing could be used."""
    case, relative = folder.name, folder.relative_to(root).as_posix()
    if case in KNOWN_BAD:
        problems.append(f"{relative}: known bad case (the organisers excluded {', '.join(KNOWN_BAD)}); skipped")
        return None
    if pseudonymiser is None:
        patient, exam = case, f"rsna-{case}"
    else:
        patient, exam = pseudonymiser.patient(case), pseudonymiser.exam(case, "rsna-mgmt")
    row: dict[str, object] = {"exam_id": exam, "patient_id": patient, "timepoint": ""}
    for entry in sorted(folder.iterdir()):
        name = entry.relative_to(root).as_posix()
        sequence = SEQUENCE_FOLDERS.get(entry.name.lower())
        if entry.name.startswith("."):
            continue
        if sequence is None or not entry.is_dir():
            problems.append(f"{name}: not a sequence folder (FLAIR, T1w, T1wCE, T2w); ignored")
            continue
        target = out_dir / exam / f"{sequence}.nii.gz"
        if target.is_file():  # written whole (atomically) by an earlier run
            row[sequence] = target
            continue
        files = []
        for file in sorted(entry.iterdir()):
            if _IMAGE.fullmatch(file.name) and file.is_file():
                files.append(file)
            elif not file.name.startswith("."):
                problems.append(f"{file.relative_to(root).as_posix()}: not an Image-N.dcm file; ignored")
        headers, unreadable = read_headers(files, root)
        problems.extend(map(str, unreadable))
        if not headers:
            problems.append(f"{name}: no readable Image-N.dcm file; {sequence} left out")
            continue
        if len(series := {h.identity.series_uid for h in headers}) > 1:
            problems.append(f"{name}: files of {len(series)} series; {sequence} left out")
            continue
        try:
            convert(headers, target)
        except (GeometryError, DicomError) as err:
            problems.append(f"{name}: {sequence} not converted, {err}")
            continue
        row[sequence] = target
    if not any(s in row for s in SEQUENCES):
        problems.append(f"{relative}: no sequence could be converted; case skipped")
        return None
    return row
