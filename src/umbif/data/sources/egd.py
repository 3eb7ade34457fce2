"""The Erasmus Glioma Database (EGD; van der Voort et al. 2021): one pre-operative exam per subject,
all registered to one atlas grid.

::

    SUBJECTS/EGD-0001/{T1,T1GD,T2,FLAIR}.nii.gz    t1, t1c, t2, flair
    SUBJECTS/EGD-0001/MASK.nii.gz                  seg (the tumour segmentation, not a brain mask)
    MR_EGD-0001/1_T1/NIFTI/T1.nii.gz, ...           the same files as XNAT delivers them
    METADATA/Brain_mask.nii.gz                     the atlas brain mask: brain_mask of every exam
    METADATA/Deface_mask.nii.gz                    known, not used
    Genetic_and_Histological_labels.(tsv|csv)      Subject, IDH, 1p19q, Grade; 1 / 0 / -1 (missing)

A file belongs to the nearest folder above it named ``EGD-0001`` (or ``MR_EGD-0001``); patient_id and
exam_id are ``EGD-0001``; timepoint stays empty.
"""

from __future__ import annotations

import re
from pathlib import Path

from umbif import SEQUENCES
from umbif.data.manifest import LABELS
from umbif.data.sequences import nifti_stem
from umbif.data.sources.common import (
    IngestReport,
    apply_labels,
    cell_key,
    ingest_report,
    label_columns,
    nifti_files,
    place_claims,
    read_table,
    table_labels,
    unmatched,
)

SITE = "EGD"
PATIENT_ID = "EGD-{:04d}"
SUBJECT = re.compile(r"(?:MR_)?EGD-(?P<number>\d+)", re.IGNORECASE)
FILES: dict[str, str] = {"t1": "t1", "t1gd": "t1c", "t2": "t2", "flair": "flair", "mask": "seg"}  # stem -> target
ATLAS_BRAIN_MASK = "brain_mask"
UNUSED_ATLAS_FILES: frozenset[str] = frozenset({"deface_mask"})
# IDH and 1p19q are the documented columns; an MGMT column coded the same way is read when present.
LABEL_COLUMNS: dict[str, str] = {"idh": "IDH", "codeletion_1p19q": "1p19q", "mgmt": "MGMT"}


def egd_label(label: str, value: str) -> str | None:
    """The manifest class of an EGD label cell: 1 is the positive class, 0 the negative, -1 missing.

    ``egd_label("codeletion_1p19q", "1") == "codeleted"``, ``egd_label("idh", "-1") == ""``.

    Returns:
        A class of ``LABELS[label]``, "" for -1 or a blank cell, None for anything else.
    """
    key = cell_key(value)
    if key in ("", "-1", "-1.0"):
        return ""
    positive, negative = LABELS[label]
    return {"1": positive, "1.0": positive, "0": negative, "0.0": negative}.get(key)


def ingest_egd(root: str | Path, labels: str | Path | None = None, site: str = SITE) -> IngestReport:
    """Build a manifest from an EGD download (subject folders searched recursively under ``root``).

    Args:
        root: the data folder; manifest paths are relative to it.
        labels: ``Genetic_and_Histological_labels`` as ``.tsv`` or ``.csv`` (an ``.xlsx`` copy must be
            saved as one of these first).
        site: site of every exam.

    Returns:
        The manifest and the problems: files not recognised or outside a subject folder, table
        cells not recognised, subjects of the table without images.

    Raises:
        FileNotFoundError: ``root`` or ``labels`` does not exist.
        ValueError: no NIfTI file or no exam under ``root``, or a table without ``Subject``.
    """
    root = Path(root).absolute()
    claims: dict[str, dict[str, list[Path]]] = {}  # patient -> target -> files
    brain_masks: list[Path] = []
    problems: list[str] = []
    for path in nifti_files(root):
        where = path.relative_to(root).as_posix()
        stem = (nifti_stem(path) or "").lower()
        subject = _subject_folder(path.relative_to(root).parts[:-1])
        if subject is None:
            if stem == ATLAS_BRAIN_MASK:
                brain_masks.append(path)
            elif stem not in UNUSED_ATLAS_FILES:
                problems.append(f"{where}: not inside a subject folder (EGD-0001); skipped")
        elif stem in FILES:
            claims.setdefault(PATIENT_ID.format(int(subject["number"])), {}).setdefault(FILES[stem], []).append(path)
        else:
            problems.append(f"{where}: not one of T1, T1GD, T2, FLAIR, MASK; skipped")
    if len(brain_masks) > 1:
        listed = ", ".join(path.relative_to(root).as_posix() for path in brain_masks)
        problems.append(f"several atlas brain masks ({listed}); none used, keep one")
    brain_mask = brain_masks[0] if len(brain_masks) == 1 else ""

    rows = []
    for patient, targets in sorted(claims.items()):
        placed, several = place_claims(targets, patient)
        problems += several
        if not any(target in placed for target in SEQUENCES):
            problems.append(f"{patient}: no T1, T1GD, T2 or FLAIR image; subject skipped")
            continue
        rows.append(
            {"exam_id": patient, "patient_id": patient, "site": site, "brain_mask": brain_mask, "timepoint": ""}
            | placed
        )
    if labels is not None and rows:
        problems += _join_egd_labels(rows, labels)
    return ingest_report(rows, root, problems)


def _join_egd_labels(rows: list[dict[str, object]], labels: str | Path) -> list[str]:
    frame = read_table(labels, "Subject")
    name = Path(labels).name
    columns, problems = label_columns(frame, name, LABEL_COLUMNS, egd_label, optional=("mgmt",))
    found, more = table_labels(frame, name, "Subject", _patient_of_subject, columns)
    apply_labels(rows, found)
    return problems + more + unmatched(name, found, {str(row["patient_id"]) for row in rows}, "patient")


def _subject_folder(folders: tuple[str, ...]) -> re.Match[str] | None:
    """The nearest of ``folders`` (outermost first) named like a subject, as a match."""
    matches = (SUBJECT.fullmatch(folder) for folder in reversed(folders))
    return next((match for match in matches if match), None)


def _patient_of_subject(value: str) -> str | None:
    match = SUBJECT.fullmatch(value.strip())
    return PATIENT_ID.format(int(match["number"])) if match else None
