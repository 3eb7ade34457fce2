"""The UPENN-GBM adapter on a small replica of the NIfTI release: structural, segmentation and skipped
folders, baseline and follow-up scans, the clinical table's per-scan rows, and `umbif ingest upenn`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import save_nifti
from umbif.cli import app
from umbif.data.manifest import Manifest, errors, validate
from umbif.data.sources.upenn import ingest_upenn, upenn_label

NIFTI = "UPENN-GBM/NIfTI-files"


def write(root: Path, *names: str) -> Path:
    """2^3 volumes at ``root/NIFTI/name``."""
    for name in names:
        save_nifti(root / NIFTI / name, np.zeros((2, 2, 2), np.float32), np.eye(4))
    return root


def structural(scan: str, folder: str = "images_structural", suffix: str = "") -> list[str]:
    return [f"{folder}/{scan}/{scan}_{kind}{suffix}.nii.gz" for kind in ("T1", "T1GD", "T2", "FLAIR")]


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """Patient 1: baseline with corrected and automated segs, plus unstripped, DTI, DSC and old/ copies, and
    a follow-up; patient 2: baseline with an automated seg only and a stray file; a seg-only scan 3."""
    return write(
        tmp_path / "upenn",
        *structural("UPENN-GBM-00001_11"),
        *structural("UPENN-GBM-00001_11", "images_structural_unstripped", "_unstripped"),
        "images_structural/UPENN-GBM-00001_11/old/UPENN-GBM-00001_11_T1.nii.gz",
        "images_segm/UPENN-GBM-00001_11_segm.nii.gz",
        "automated_segm/UPENN-GBM-00001_11_automated_approx_segm.nii.gz",
        "images_DTI/UPENN-GBM-00001_11/UPENN-GBM-00001_11_DTI_FA.nii.gz",
        "images_DSC/UPENN-GBM-00001_11/UPENN-GBM-00001_11_DSC_ap-rCBV.nii.gz",
        *structural("UPENN-GBM-00001_21"),
        *structural("UPENN-GBM-00002_11")[:2],
        "automated_segm/UPENN-GBM-00002_11_automated_approx_segm.nii.gz",
        "images_structural/UPENN-GBM-00002_11/UPENN-GBM-00002_11_T1_mask.nii.gz",
        "automated_segm/UPENN-GBM-00003_11_automated_approx_segm.nii.gz",
        "images_structural/UPENN-GBM-00004_31/UPENN-GBM-00004_31_T1.nii.gz",
        "00001_t1n.nii.gz",
    )


def clinical(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A clinical table with the release's columns: (ID, IDH1, MGMT, PsP_TP_score) per row."""
    frame = pd.DataFrame(rows, columns=["ID", "IDH1", "MGMT", "PsP_TP_score"])
    frame.insert(1, "Gender", "F")
    frame.to_csv(path, index=False)
    return path


def test_layout(release: Path) -> None:
    report = ingest_upenn(release)
    table = report.manifest.table
    assert [tuple(r) for r in table[["exam_id", "patient_id", "timepoint", "site", "seg_source"]].values] == [
        ("UPENN-GBM-00001_11", "UPENN-GBM-00001", "0", "UPENN-GBM", "corrected"),
        ("UPENN-GBM-00001_21", "UPENN-GBM-00001", "1", "UPENN-GBM", ""),
        ("UPENN-GBM-00002_11", "UPENN-GBM-00002", "0", "UPENN-GBM", "automated"),
    ]
    scan = f"{NIFTI}/images_structural/UPENN-GBM-00001_11/UPENN-GBM-00001_11"
    assert table.iloc[0][["t1", "t1c", "t2", "flair", "seg", "brain_mask"]].tolist() == [
        f"{scan}_T1.nii.gz",  # not the old/ copy, not the unstripped image
        f"{scan}_T1GD.nii.gz",
        f"{scan}_T2.nii.gz",
        f"{scan}_FLAIR.nii.gz",
        f"{NIFTI}/images_segm/UPENN-GBM-00001_11_segm.nii.gz",  # corrected before automated
        "",
    ]
    assert table.iloc[2][["t2", "seg"]].tolist() == [
        "",
        f"{NIFTI}/automated_segm/UPENN-GBM-00002_11_automated_approx_segm.nii.gz",
    ]
    assert report.problems == [
        f"{NIFTI}/00001_t1n.nii.gz: not named like a UPENN-GBM scan file (UPENN-GBM-00001_11_T1GD); skipped",
        f"{NIFTI}/images_structural/UPENN-GBM-00002_11/UPENN-GBM-00002_11_T1_mask.nii.gz: "
        "map 'T1_mask' not recognised; skipped",
        f"{NIFTI}/images_structural/UPENN-GBM-00004_31/UPENN-GBM-00004_31_T1.nii.gz: "
        "scan suffix _31 is neither _11 (baseline) nor _21; skipped",
        "UPENN-GBM-00003_11: no T1, T1GD, T2 or FLAIR image; scan skipped",
    ]
    assert errors(validate(report.manifest)) == []


def test_clinical_labels(release: Path, tmp_path: Path) -> None:
    table = clinical(
        tmp_path / "UPENN-GBM_clinical_info_v2.1.csv",
        [
            ("UPENN-GBM-00001_11", "Wildtype", "Methylated", ""),
            ("UPENN-GBM-00001_21", "NOS", "Not Available", "62"),  # follow-up: labels per patient, score per scan
            ("UPENN-GBM-00002_11", "Mutated", "Indeterminate", "Not Available"),
            ("UPENN-GBM-00005_11", "Wildtype", "Unmethylated", ""),
            ("UPENN-GBM-00002_21", "Wildtype", "hypermethylated", ""),
        ],
    )
    report = ingest_upenn(release, labels=table)
    labels = report.manifest.table.set_index("exam_id")[["idh", "mgmt", "outcome", "psp_tp_score"]]
    assert labels.to_dict("index") == {
        "UPENN-GBM-00001_11": {"idh": "wildtype", "mgmt": "methylated", "outcome": "", "psp_tp_score": ""},
        "UPENN-GBM-00001_21": {"idh": "wildtype", "mgmt": "methylated", "outcome": "", "psp_tp_score": "62"},
        "UPENN-GBM-00002_11": {"idh": "", "mgmt": "", "outcome": "", "psp_tp_score": ""},
    }
    assert report.problems[4:] == [
        "UPENN-GBM_clinical_info_v2.1.csv row 5, column MGMT: value 'hypermethylated' not recognised "
        "(methylated / unmethylated); left empty",
        "UPENN-GBM_clinical_info_v2.1.csv: rows of UPENN-GBM-00002 disagree on idh "
        "(mutant in row 3, wildtype in row 5); left empty",
        "UPENN-GBM_clinical_info_v2.1.csv: 2 subjects match no scan: UPENN-GBM-00005_11, UPENN-GBM-00002_21",
    ]


@pytest.mark.parametrize(
    ("label", "value", "expected"),
    [
        ("idh", "Wildtype", "wildtype"),
        ("idh", "wild type", "wildtype"),
        ("idh", "Mutated", "mutant"),
        ("idh", "NOS", ""),
        ("idh", "Not Available", ""),
        ("idh", "", ""),
        ("idh", "R132H", None),
        ("mgmt", "Methylated", "methylated"),
        ("mgmt", "Unmethylated", "unmethylated"),
        ("mgmt", "Indeterminate", ""),
        ("mgmt", "NA", ""),
        ("mgmt", "positive", None),
    ],
)
def test_upenn_label(label: str, value: str, expected: str | None) -> None:
    assert upenn_label(label, value) == expected


def test_cli_ingest_upenn(release: Path, tmp_path: Path) -> None:
    table = clinical(tmp_path / "clinical.csv", [("UPENN-GBM-00001_21", "Wildtype", "Unmethylated", "12.5")])
    out = release / "manifest.parquet"
    args = ["ingest", "upenn", str(release / NIFTI), "--labels", str(table), "--out", str(out), "--site", "penn"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "3 exams" in result.output
    manifest = Manifest.read(out)
    assert validate(manifest) == []
    assert manifest.table[["mgmt", "psp_tp_score", "site"]].values.tolist() == [
        ["unmethylated", "", "penn"],
        ["unmethylated", "12.5", "penn"],
        ["", "", "penn"],
    ]
