"""The BraTS challenge layouts: one folder per exam, named after the case.

::

    BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz
        patient_id "00000", exam_id "BraTS2021_00000", no timepoint
    BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz   (2023 on; also MEN, SSA, PED, MET, ...)
        patient_id "00000", exam_id "BraTS-GLI-00000-000", timepoint 0 (the last number)

Files are placed by the built-in alias table, like :mod:`umbif.data.sources.folder`; folders not
named like a BraTS case are reported and skipped. Validation sets have no ``seg``: its column stays
empty.
"""

from __future__ import annotations

import re
from pathlib import Path

from umbif.data.sequences import alias_table
from umbif.data.sources.common import IngestReport, find_exam_folders, ingest_report, site_name

BRATS_2021 = re.compile(r"BraTS2021_(?P<patient>\d+)")
BRATS_2023 = re.compile(r"BraTS-(?P<challenge>[A-Za-z]+)-(?P<patient>\d+)-(?P<timepoint>\d+)")


def ingest_brats(
    root: str | Path,
    site: str | None = None,
    labels: str | Path | None = None,
    subject_column: str = "subject",
    join_on: str = "patient",
) -> IngestReport:
    """Build a manifest from a BraTS 2021 or 2023 training/validation folder (searched recursively).

    Args:
        root: the data folder; manifest paths are relative to it.
        site: site of every exam (default: ``root``'s folder name).
        labels: optional labels CSV (e.g. RSNA-MGMT's ``train_labels.csv`` with
            ``subject_column="BraTS21ID"``; ``2`` matches patient ``00002``).
        subject_column: the labels CSV column holding the subject id.
        join_on: match the subject id against ``"patient"`` or ``"exam"`` ids.

    Returns:
        The manifest and the problems (unplaced files, folders that are not BraTS cases, label rows).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no NIfTI file or no BraTS case under ``root``, or a bad labels CSV.
    """
    exams, problems = find_exam_folders(root, alias_table())
    site = site or site_name(root)
    rows = []
    challenges = set()
    for exam in exams:
        name = exam.path.name
        if match := BRATS_2021.fullmatch(name):
            timepoint = ""
        elif match := BRATS_2023.fullmatch(name):
            timepoint = str(int(match["timepoint"]))
            challenges.add(match["challenge"])
        else:
            problems.append(f"{exam.relative}: not named like a BraTS case (BraTS2021_00000, BraTS-GLI-00000-000)")
            continue
        rows.append(
            {"exam_id": name, "patient_id": match["patient"], "site": site, "timepoint": timepoint, **exam.files}
        )
    if len(challenges) > 1:
        problems.append(
            f"{root} mixes the challenges {', '.join(sorted(challenges))}: their case numbers are separate, so "
            "equal numbers become one patient_id; ingest each challenge folder on its own"
        )
    return ingest_report(rows, root, problems, labels, subject_column, join_on)
