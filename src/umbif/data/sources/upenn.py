"""The UPENN-GBM NIfTI release (TCIA; Bakas et al. 2022): one scan id per exam, files spread over folders.

::

    NIfTI-files/images_structural/UPENN-GBM-00001_11/UPENN-GBM-00001_11_{T1,T1GD,T2,FLAIR}.nii.gz
                                                        t1, t1c, t2, flair (skull-stripped, SRI-24 grid)
    NIfTI-files/images_segm/UPENN-GBM-00001_11_segm.nii.gz                       seg (expert-corrected)
    NIfTI-files/automated_segm/UPENN-GBM-00001_11_automated_approx_segm.nii.gz   seg when no corrected one
    images_structural_unstripped/..._unstripped, images_DTI/..._DTI_*, images_DSC/..._DSC*, .../old/...
                                                        known, not used
    UPENN-GBM_clinical_info_v2.1.csv   one row per scan id: ID, IDH1, MGMT, PsP_TP_score, ...

Scan ``UPENN-GBM-00001_11`` is the baseline (timepoint 0) of patient ``UPENN-GBM-00001``;
``UPENN-GBM-00001_21`` its follow-up (timepoint 1). IDH1 and MGMT are per patient; the follow-up's
``PsP_TP_score`` is copied to the free column ``psp_tp_score`` of its exam, and ``outcome`` stays
empty because the score's scale is not documented where we could check it (see docs/ingest.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

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

SITE = "UPENN-GBM"
PATIENT_ID = "UPENN-GBM-{:05d}"
SCAN_FILE = re.compile(r"UPENN-GBM-(?P<number>\d+)_(?P<visit>\d\d)_(?P<kind>.+)", re.IGNORECASE)
SCAN_ID = re.compile(r"UPENN-GBM-(?P<number>\d+)_(?P<visit>\d\d)", re.IGNORECASE)
VISITS: dict[str, int] = {"11": 0, "21": 1}  # scan id suffix -> timepoint
SEQUENCE_KINDS: dict[str, str] = {"t1": "t1", "t1gd": "t1c", "t2": "t2", "flair": "flair"}
SEG_KINDS: dict[str, str] = {"segm": "corrected", "automated_approx_segm": "automated"}  # kind -> seg_source
UNUSED_SUFFIXES: tuple[str, ...] = ("_unstripped",)  # images_structural_unstripped
UNUSED_PREFIXES: tuple[str, ...] = ("dti_", "dsc")  # images_DTI (AD, FA, RD, TR), images_DSC (series, maps)
SUPERSEDED_FOLDER = "old"  # two baselines keep an earlier version of their images in old/
LABEL_COLUMNS: dict[str, str] = {"idh": "IDH1", "mgmt": "MGMT"}

_UPENN_VALUES: dict[str, dict[str, str]] = {
    # "NOS" (not otherwise specified) is counted apart from mutated and wildtype in the release.
    "idh": {"wildtype": "wildtype", "wild type": "wildtype", "mutated": "mutant", "mutant": "mutant", "nos": ""},
    "mgmt": {"methylated": "methylated", "unmethylated": "unmethylated", "indeterminate": ""},
}


def upenn_label(label: str, value: str) -> str | None:
    """The manifest class of a UPENN-GBM clinical cell: ``upenn_label("mgmt", "Unmethylated") == "unmethylated"``.

    Args:
        label: ``idh`` (column ``IDH1``) or ``mgmt`` (column ``MGMT``).
        value: the cell as written.

    Returns:
        A class of ``LABELS[label]``, "" for blank, ``Not Available``, ``NOS`` or ``Indeterminate``,
        or None when the value is not recognised.
    """
    if is_blank(value):
        return ""
    return _UPENN_VALUES[label].get(cell_key(value))


def ingest_upenn(root: str | Path, labels: str | Path | None = None, site: str = SITE) -> IngestReport:
    """Build a manifest from the UPENN-GBM NIfTI release (files searched recursively under ``root``).

    Args:
        root: the data folder (``NIfTI-files`` or a folder above it); manifest paths are relative to it.
        labels: the clinical table (``UPENN-GBM_clinical_info_v2.1.csv``).
        site: site of every exam.

    Returns:
        The manifest (free columns ``seg_source`` and, with labels, ``psp_tp_score``) and the
        problems: files not recognised, scan ids with an unknown visit, table cells not
        recognised, scans of the table without images.

    Raises:
        FileNotFoundError: ``root`` or ``labels`` does not exist.
        ValueError: no NIfTI file or no exam under ``root``, or a clinical table without ``ID``.
    """
    root = Path(root).absolute()
    claims: dict[str, dict[str, list[Path]]] = {}  # exam -> target -> files
    problems: list[str] = []
    for path in nifti_files(root):
        where = path.relative_to(root).as_posix()
        match = SCAN_FILE.fullmatch(nifti_stem(path) or "")
        if match is None:
            problems.append(f"{where}: not named like a UPENN-GBM scan file (UPENN-GBM-00001_11_T1GD); skipped")
            continue
        if match["visit"] not in VISITS:
            problems.append(f"{where}: scan suffix _{match['visit']} is neither _11 (baseline) nor _21; skipped")
            continue
        kind = match["kind"].lower()
        exam = f"{PATIENT_ID.format(int(match['number']))}_{match['visit']}"
        if path.parent.name.lower() == SUPERSEDED_FOLDER or kind.endswith(UNUSED_SUFFIXES):
            continue
        if kind in SEQUENCE_KINDS:
            claims.setdefault(exam, {}).setdefault(SEQUENCE_KINDS[kind], []).append(path)
        elif kind in SEG_KINDS:
            claims.setdefault(exam, {}).setdefault(f"seg:{SEG_KINDS[kind]}", []).append(path)
        elif not kind.startswith(UNUSED_PREFIXES):
            problems.append(f"{where}: map {match['kind']!r} not recognised; skipped")

    rows = []
    for exam, targets in sorted(claims.items()):
        placed, several = place_claims(targets, exam)
        problems += several
        if not any(target in placed for target in SEQUENCE_KINDS.values()):
            problems.append(f"{exam}: no T1, T1GD, T2 or FLAIR image; scan skipped")
            continue
        segs = {key.removeprefix("seg:"): placed.pop(key) for key in [k for k in placed if k.startswith("seg:")]}
        source = next((s for s in SEG_KINDS.values() if s in segs), "")  # corrected before automated
        rows.append(
            {
                "exam_id": exam,
                "patient_id": exam.rsplit("_", 1)[0],
                "site": site,
                "timepoint": VISITS[exam.rsplit("_", 1)[1]],
                **placed,
                "seg": segs.get(source, ""),
                "seg_source": source,
            }
        )
    if labels is not None and rows:
        problems += _join_upenn_labels(rows, labels)
    return ingest_report(rows, root, problems)


def _join_upenn_labels(rows: list[dict[str, object]], labels: str | Path) -> list[str]:
    """IDH1 and MGMT per patient, PsP_TP_score per scan; returns the table's problems."""
    frame = read_table(labels, "ID")
    name = Path(labels).name
    columns, problems = label_columns(frame, name, LABEL_COLUMNS, upenn_label)
    found, more = table_labels(frame, name, "ID", _patient_of_scan, columns)
    apply_labels(rows, found)
    scores = _psp_tp_scores(frame)
    for row in rows:
        row["psp_tp_score"] = scores.get(str(row["exam_id"]), "")
    scans = [scan for scan in map(_scan_id, frame["ID"]) if scan]
    return problems + more + unmatched(name, scans, {str(row["exam_id"]) for row in rows}, "scan")


def _psp_tp_scores(frame: pd.DataFrame) -> dict[str, str]:
    """Scan id -> PsP_TP_score as written, for the rows that have one."""
    column = find_column(frame, "PsP_TP_score")
    if column is None:
        return {}
    return {
        scan: value.strip()
        for scan, value in zip(map(_scan_id, frame["ID"]), frame[column], strict=True)
        if scan and not is_blank(value)
    }


def _scan_id(value: str) -> str | None:
    """``UPENN-GBM-1_11`` -> ``UPENN-GBM-00001_11``; None when the cell is not a scan id."""
    match = SCAN_ID.fullmatch(value.strip())
    return f"{PATIENT_ID.format(int(match['number']))}_{match['visit']}" if match else None


def _patient_of_scan(value: str) -> str | None:
    scan = _scan_id(value)
    return scan.rsplit("_", 1)[0] if scan else None
