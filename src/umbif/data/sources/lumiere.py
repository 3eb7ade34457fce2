"""The LUMIERE layout (longitudinal glioblastoma MRI with expert RANO ratings; Suter et al. 2022).

::

    Imaging/Patient-001/week-000-1/{T1,CT1,T2,FLAIR}.nii.gz   t1, t1c, t2, flair
    Imaging/Patient-001/week-000-1/DeepBraTumIA-segmentation/..., HD-GLIO-AUTO-segmentation/...
                                                             automatic segmentations, not used
    LUMIERE-ExpertRating-v202211.csv     Patient, Date (week-044), Rating (according to RANO, ...)
    LUMIERE-Demographics_Pathology.csv   Patient, IDH (WT: wild type), MGMT qualitative, ...

patient_id is ``Patient-001``, exam_id ``Patient-001_week-044``; timepoint is the week since the
pre-operative scan (``week-000-2``, a second scan in the same week, is 0.1 weeks after ``week-000-1``).

A rating becomes the exam's ``outcome``: PD -> progression, CR / PR / SD -> treatment_effect (the
negative class: no progression), but only for exams after the patient's post-operative scan (its
first ``Post-Op`` rating, else its last ``Pre-Op`` one). Pre-Op and Post-Op exams have no outcome.
"""

from __future__ import annotations

import re
from pathlib import Path

from umbif.data.sequences import nifti_stem
from umbif.data.sources.common import (
    IngestReport,
    apply_labels,
    cell_key,
    find_column,
    ingest_report,
    is_blank,
    label_columns,
    nifti_files,
    place_claims,
    read_table,
    table_labels,
    unmatched,
)

SITE = "LUMIERE"
PATIENT_ID = "Patient-{:03d}"
PATIENT = re.compile(r"Patient-(?P<number>\d+)", re.IGNORECASE)
WEEK = re.compile(r"week-(?P<week>\d+)(?:-(?P<repeat>\d+))?", re.IGNORECASE)
FILES: dict[str, str] = {"t1": "t1", "ct1": "t1c", "t2": "t2", "flair": "flair"}  # stem -> target
TOOL_FOLDERS: frozenset[str] = frozenset({"deepbratumia-segmentation", "hd-glio-auto-segmentation"})
LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "idh": ("IDH (WT: wild type)", "IDH"),
    "mgmt": ("MGMT qualitative", "MGMT"),
}
SURGERY_MARKERS: tuple[str, str] = ("post-op", "pre-op")  # ratings that place the operation

_LUMIERE_VALUES: dict[str, dict[str, str]] = {
    "idh": {"wt": "wildtype", "wild type": "wildtype", "wildtype": "wildtype", "mutant": "mutant", "mutated": "mutant"},
    "mgmt": {"methylated": "methylated", "not methylated": "unmethylated", "unmethylated": "unmethylated"},
    "outcome": {
        "pd": "progression",
        "cr": "treatment_effect",
        "pr": "treatment_effect",
        "sd": "treatment_effect",
        "pre-op": "",
        "post-op": "",
    },
}
IDH_VARIANT = re.compile(r"(idh[12] )?(p\.)?(r|arg)1[37]2\w+")  # IDH1 R132H, p.R132H: a mutation


def lumiere_label(label: str, value: str) -> str | None:
    """The manifest class of a LUMIERE cell, stray spaces ignored: ``lumiere_label("outcome", "SD ")``.

    Args:
        label: ``idh``, ``mgmt`` (demographics table) or ``outcome`` (a RANO rating).
        value: the cell as written.

    Returns:
        A class of ``LABELS[label]``; "" for a blank, ``na``, ``None``, ``Pre-Op`` or ``Post-Op``
        cell; None when the value is not recognised (also for a combined rating like ``Post-Op/PD``).
        Whether a rating's exam follows surgery is checked by :func:`ingest_lumiere`, not here.
    """
    if is_blank(value):
        return ""
    key = cell_key(value)
    if label == "idh" and IDH_VARIANT.fullmatch(key):
        return "mutant"
    return _LUMIERE_VALUES[label].get(key)


def ingest_lumiere(
    root: str | Path,
    labels: str | Path | None = None,
    ratings: str | Path | None = None,
    site: str = SITE,
) -> IngestReport:
    """Build a manifest from the LUMIERE imaging folder (``Patient-*/week-*`` folders searched under ``root``).

    Args:
        root: the data folder (``Imaging`` or a folder above it); manifest paths are relative to it.
        labels: ``LUMIERE-Demographics_Pathology.csv`` (IDH, MGMT per patient).
        ratings: ``LUMIERE-ExpertRating-v202211.csv`` (RANO rating per exam -> ``outcome`` and the
            free column ``rano_rating``).
        site: site of every exam.

    Returns:
        The manifest and the problems: files not recognised, ratings not recognised or not after
        surgery, table cells not recognised, subjects or ratings without exams.

    Raises:
        FileNotFoundError: ``root`` or a table does not exist.
        ValueError: no NIfTI file or no exam under ``root``, or a table without its id columns.
    """
    root = Path(root).absolute()
    claims: dict[tuple[str, str], dict[str, list[Path]]] = {}  # (patient, week) -> target -> files
    problems: list[str] = []
    for path in nifti_files(root):
        where = path.relative_to(root).as_posix()
        parts = path.relative_to(root).parts
        found = _exam_folder(parts)
        if found is None:
            problems.append(f"{where}: not inside a Patient-001/week-000 folder; skipped")
            continue
        depth, exam = found
        inside = parts[depth:]
        stem = (nifti_stem(path) or "").lower()
        if len(inside) == 1 and stem in FILES:
            claims.setdefault(exam, {}).setdefault(FILES[stem], []).append(path)
        elif len(inside) == 1:
            problems.append(f"{where}: not one of T1, CT1, T2, FLAIR; skipped")
        elif inside[0].lower() not in TOOL_FOLDERS:
            problems.append(f"{where}: in an unknown subfolder of the exam; skipped")

    rows = []
    for (patient, week), targets in sorted(claims.items(), key=lambda item: (item[0][0], _order(item[0][1]))):
        placed, several = place_claims(targets, f"{patient}/{week}")
        problems += several
        weeks, repeat = _order(week)
        rows.append(
            {
                "exam_id": f"{patient}_{week}",
                "patient_id": patient,
                "site": site,
                "timepoint": f"{weeks + (max(repeat, 1) - 1) / 10:g}",
                **placed,
            }
        )
    if labels is not None and rows:
        problems += _join_demographics(rows, labels)
    if ratings is not None and rows:
        problems += _join_ratings(rows, ratings)
    return ingest_report(rows, root, problems)


def _exam_folder(parts: tuple[str, ...]) -> tuple[int, tuple[str, str]] | None:
    """Where a file's ``Patient-*/week-*`` folders end, and (patient_id, week); None outside one."""
    for i in range(len(parts) - 2):
        patient, week = _patient_id(parts[i]), _week_name(parts[i + 1])
        if patient and week:
            return i + 2, (patient, week)
    return None


def _patient_id(value: str) -> str | None:
    match = PATIENT.fullmatch(value.strip())
    return PATIENT_ID.format(int(match["number"])) if match else None


def _week_name(value: str) -> str | None:
    """``week-44`` -> ``week-044``, ``week-000-2`` stays; None when the text is not a week."""
    match = WEEK.fullmatch(value.strip())
    if match is None:
        return None
    return f"week-{int(match['week']):03d}" + (f"-{int(match['repeat'])}" if match["repeat"] else "")


def _order(week: str) -> tuple[int, int]:
    """(week, repeat) of a canonical week name; repeat 0 when the name has none."""
    match = WEEK.fullmatch(week)
    assert match is not None, week
    return int(match["week"]), int(match["repeat"] or 0)


def _join_demographics(rows: list[dict[str, object]], labels: str | Path) -> list[str]:
    frame = read_table(labels, "Patient")
    name = Path(labels).name
    columns, problems = label_columns(frame, name, LABEL_COLUMNS, lumiere_label)
    found, more = table_labels(frame, name, "Patient", _patient_id, columns)
    apply_labels(rows, found)
    return problems + more + unmatched(name, found, {str(row["patient_id"]) for row in rows}, "patient")


def _join_ratings(rows: list[dict[str, object]], ratings: str | Path) -> list[str]:
    """``outcome`` and ``rano_rating`` of every exam from the expert ratings; returns their problems."""
    frame = read_table(ratings, "Patient")
    name = Path(ratings).name
    date = find_column(frame, "Date", "Timepoint")
    rating = next((c for c in frame.columns if c.lower().startswith("rating") and "rationale" not in c.lower()), None)
    if date is None or rating is None:
        raise ValueError(f"{ratings}: needs a Date and a Rating column; columns found: {', '.join(frame.columns)}")
    problems: list[str] = []
    rated: dict[tuple[str, str], tuple[int, str]] = {}  # (patient, week) -> (row, rating without stray spaces)
    for index, record in enumerate(frame.to_dict("records"), start=1):
        patient, week = _patient_id(record["Patient"]), _week_name(record[date])
        if patient is None or week is None:
            problems.append(f"{name} row {index}: {record['Patient']!r} / {record[date]!r} is not a patient and week")
            continue
        exam = (patient, week)
        value = " ".join(record[rating].split())
        if exam in rated:
            same = rated[exam][1] == value
            problems.append(
                f"{name} row {index}: {exam[0]} {exam[1]} also in row {rated[exam][0]}"
                + ("" if same else " with another rating; neither is used")
            )
            rated[exam] = (rated[exam][0], value if same else "")
            continue
        rated[exam] = (index, value)

    surgery = _surgery_weeks(rated)
    undated: set[str] = set()
    for row in rows:  # ratings of exams not on disk are only counted, below
        patient = str(row["patient_id"])
        week = str(row["exam_id"]).removeprefix(f"{patient}_")
        index, value = rated.get((patient, week), (0, ""))
        outcome = lumiere_label("outcome", value)
        after_surgery = patient in surgery and _order(week) > surgery[patient]
        if outcome is None:
            problems.append(
                f"{name} row {index}: rating {value!r} is not one of CR, PR, SD, PD, Pre-Op, Post-Op; left empty"
            )
        elif outcome and patient not in surgery:
            undated.add(patient)
        elif outcome and not after_surgery:
            problems.append(
                f"{name} row {index}: rating {value} of {week} is not after the post-operative scan; unused"
            )
        row["outcome"] = outcome if outcome and after_surgery else ""
        row["rano_rating"] = value
    problems += [
        f"{name}: {patient} has no Pre-Op or Post-Op rating, so its ratings cannot be placed after surgery; "
        "outcome left empty"
        for patient in sorted(undated)
    ]
    keys = [f"{patient}_{week}" for patient, week in rated]
    return problems + unmatched(name, keys, {str(row["exam_id"]) for row in rows}, "exam")


def _surgery_weeks(rated: dict[tuple[str, str], tuple[int, str]]) -> dict[str, tuple[int, int]]:
    """Per patient, the (week, repeat) of its post-operative scan: the first Post-Op rating, else the
    last Pre-Op one. A rating like ``Post-Op/PD`` counts as Post-Op here."""
    by_patient: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for (patient, week), (_, value) in rated.items():
        key = cell_key(value)
        for marker in SURGERY_MARKERS:
            if key.startswith(marker):
                by_patient.setdefault(patient, {}).setdefault(marker, []).append(_order(week))
    surgery = {}
    for patient, markers in by_patient.items():
        surgery[patient] = min(markers["post-op"]) if "post-op" in markers else max(markers["pre-op"])
    return surgery
