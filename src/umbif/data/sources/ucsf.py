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

"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

from umbif.data.sequences import nifti_stem
from umbif.data.sources.common import (
    IngestReport,
    apply_labels,
    cell_key,
    ingest_report,
    is_blank,
    label_columns,
    nifti_files,
    place_claims,
    read_table,
    table_labels,
    unmatched,
)

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


def _by_folder(files: list[Path]) -> dict[Path, list[Path]]:
    folders: dict[Path, list[Path]] = {}
    for path in files:
        folders.setdefault(path.parent, []).append(path)
    return folders


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() or "."
