"""The LUMIERE adapter on a small replica: Patient/week folders with segmentation-tool subfolders, weeks
as timepoints, expert RANO ratings (stray spaces, Pre-Op / Post-Op) as outcome after surgery, the
demographics table, and `umbif ingest lumiere`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import save_nifti
from umbif.cli import app
from umbif.data.manifest import Manifest, errors, validate
from umbif.data.sources.lumiere import ingest_lumiere, lumiere_label

RATING = (
    "Rating (according to RANO, PD: Progressive disease, SD: Stable disease, PR: Partial response, "
    "CR: Complete response, Pre-Op: Pre-Operative, Post-Op: Post-Operative)"
)
WEEKS = {
    "Patient-001": ("week-000-1", "week-000-2", "week-010", "week-044"),
    "Patient-002": ("week-000", "week-012"),
    "Patient-003": ("week-005", "week-020"),
}


def write(root: Path, *names: str) -> None:
    for name in names:
        save_nifti(root / name, np.zeros((2, 2, 2), np.float32), np.eye(4))


@pytest.fixture
def imaging(tmp_path: Path) -> Path:
    """Three patients' weeks with all four sequences (Patient-002 week-012 without T2), the tools'
    segmentation subfolders, and files the adapter does not know."""
    root = tmp_path / "lumiere" / "Imaging"
    for patient, weeks in WEEKS.items():
        for week in weeks:
            write(root, *(f"{patient}/{week}/{s}.nii.gz" for s in ("T1", "CT1", "T2", "FLAIR")))
    (root / "Patient-002/week-012/T2.nii.gz").unlink()
    write(
        root,
        "Patient-001/week-010/DeepBraTumIA-segmentation/atlas/segmentation/seg_mask.nii.gz",
        "Patient-001/week-010/HD-GLIO-AUTO-segmentation/native/segmentation_CT1_origspace.nii.gz",
        "Patient-001/week-010/custom/seg.nii.gz",
        "Patient-001/week-010/T1_old.nii.gz",
        "Patient-001/atlas.nii.gz",
    )
    return root


def ratings_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    frame = pd.DataFrame(rows, columns=["Patient", "Date", RATING])
    frame["Rating rationale (CRET: complete resection of the enhancing tumor, ...)"] = ""
    frame.to_csv(path, index=False)
    return path


def test_layout(imaging: Path) -> None:
    report = ingest_lumiere(imaging)
    table = report.manifest.table
    assert table[["exam_id", "patient_id", "timepoint", "site"]].values.tolist() == [
        ["Patient-001_week-000-1", "Patient-001", "0", "LUMIERE"],
        ["Patient-001_week-000-2", "Patient-001", "0.1", "LUMIERE"],
        ["Patient-001_week-010", "Patient-001", "10", "LUMIERE"],
        ["Patient-001_week-044", "Patient-001", "44", "LUMIERE"],
        ["Patient-002_week-000", "Patient-002", "0", "LUMIERE"],
        ["Patient-002_week-012", "Patient-002", "12", "LUMIERE"],
        ["Patient-003_week-005", "Patient-003", "5", "LUMIERE"],
        ["Patient-003_week-020", "Patient-003", "20", "LUMIERE"],
    ]
    assert table.iloc[2][["t1", "t1c", "t2", "flair", "seg"]].tolist() == [
        "Patient-001/week-010/T1.nii.gz",
        "Patient-001/week-010/CT1.nii.gz",
        "Patient-001/week-010/T2.nii.gz",
        "Patient-001/week-010/FLAIR.nii.gz",
        "",  # the automatic segmentations are not used
    ]
    assert table.iloc[5]["t2"] == ""
    assert report.problems == [
        "Patient-001/atlas.nii.gz: not inside a Patient-001/week-000 folder; skipped",
        "Patient-001/week-010/custom/seg.nii.gz: in an unknown subfolder of the exam; skipped",
        "Patient-001/week-010/T1_old.nii.gz: not one of T1, CT1, T2, FLAIR; skipped",
    ]
    assert errors(validate(report.manifest)) == []


def test_ratings_become_outcome_after_surgery(imaging: Path, tmp_path: Path) -> None:
    ratings = ratings_csv(
        tmp_path / "LUMIERE-ExpertRating-v202211.csv",
        [
            ("Patient-001", "week-000-1", "Pre-Op"),
            ("Patient-001", "week-000-2", "Post-Op "),  # stray space
            ("Patient-001", "week-010", " SD"),
            ("Patient-001", "week-044", "PD"),
            ("Patient-002", "week-000", "PD"),  # rated before its Pre-Op scan (week-012): not after surgery
            ("Patient-002", "week-012", "Pre-Op"),
            ("Patient-003", "week-005", "CR"),  # before its (combined) Post-Op rating
            ("Patient-003", "week-020", "Post-Op/PD"),
            ("Patient-009", "week-003", "PR"),
        ],
    )
    report = ingest_lumiere(imaging, ratings=ratings)
    got = report.manifest.table.set_index("exam_id")[["outcome", "rano_rating"]].to_dict("index")
    assert got == {
        "Patient-001_week-000-1": {"outcome": "", "rano_rating": "Pre-Op"},
        "Patient-001_week-000-2": {"outcome": "", "rano_rating": "Post-Op"},
        "Patient-001_week-010": {"outcome": "treatment_effect", "rano_rating": "SD"},
        "Patient-001_week-044": {"outcome": "progression", "rano_rating": "PD"},
        "Patient-002_week-000": {"outcome": "", "rano_rating": "PD"},
        "Patient-002_week-012": {"outcome": "", "rano_rating": "Pre-Op"},
        "Patient-003_week-005": {"outcome": "", "rano_rating": "CR"},
        "Patient-003_week-020": {"outcome": "", "rano_rating": "Post-Op/PD"},
    }
    name = ratings.name
    assert report.problems[3:] == [
        f"{name} row 5: rating PD of week-000 is not after the post-operative scan; unused",
        f"{name} row 7: rating CR of week-005 is not after the post-operative scan; unused",
        f"{name} row 8: rating 'Post-Op/PD' is not one of CR, PR, SD, PD, Pre-Op, Post-Op; left empty",
        f"{name}: 1 subjects match no exam: Patient-009_week-003",
    ]


def test_patient_without_surgery_rating_is_reported(imaging: Path, tmp_path: Path) -> None:
    ratings = ratings_csv(tmp_path / "r.csv", [("Patient-002", "week-012", "PD"), ("Patient-002", "week-12", "SD")])
    report = ingest_lumiere(imaging, ratings=ratings)
    assert set(report.manifest.table["outcome"]) == {""}
    assert report.problems[3:] == [
        "r.csv row 2: Patient-002 week-012 also in row 1 with another rating; neither is used",
    ]
    ratings_csv(tmp_path / "r.csv", [("Patient-003", "week-020", "PD")])
    report = ingest_lumiere(imaging, ratings=tmp_path / "r.csv")
    assert report.problems[3:] == [
        "r.csv: Patient-003 has no Pre-Op or Post-Op rating, so its ratings cannot be placed after surgery; "
        "outcome left empty"
    ]


def test_demographics(imaging: Path, tmp_path: Path) -> None:
    demographics = tmp_path / "LUMIERE-Demographics_Pathology.csv"
    pd.DataFrame(
        {
            "Patient": ["Patient-001", "Patient-002", "Patient-003"],
            "Survival time (weeks)": ["87", "na", "40"],
            "IDH (WT: wild type)": ["WT", "IDH1 R132H", "na"],
            "MGMT qualitative": ["methylated", "not methylated", "partially"],
        }
    ).to_csv(demographics, index=False)
    report = ingest_lumiere(imaging.parent, labels=demographics)  # root above Imaging/ works too
    labels = report.manifest.table.groupby("patient_id")[["idh", "mgmt"]].first().to_dict("index")
    assert labels == {
        "Patient-001": {"idh": "wildtype", "mgmt": "methylated"},
        "Patient-002": {"idh": "mutant", "mgmt": "unmethylated"},
        "Patient-003": {"idh": "", "mgmt": ""},
    }
    assert report.manifest.table.iloc[0]["t1"] == "Imaging/Patient-001/week-000-1/T1.nii.gz"
    assert report.problems[3:] == [
        "LUMIERE-Demographics_Pathology.csv row 3, column MGMT qualitative: value 'partially' not recognised "
        "(methylated / unmethylated); left empty"
    ]


@pytest.mark.parametrize(
    ("label", "value", "expected"),
    [
        ("outcome", "PD", "progression"),
        ("outcome", "PD ", "progression"),
        ("outcome", "SD", "treatment_effect"),
        ("outcome", "PR", "treatment_effect"),
        ("outcome", " CR", "treatment_effect"),
        ("outcome", "Pre-Op", ""),
        ("outcome", "Post-Op ", ""),
        ("outcome", "None", ""),
        ("outcome", "", ""),
        ("outcome", "Post-Op/PD", None),
        ("outcome", "progressive", None),
        ("idh", "WT", "wildtype"),
        ("idh", "IDH1 R132H", "mutant"),
        ("idh", "na", ""),
        ("idh", "positive", None),
        ("mgmt", "methylated", "methylated"),
        ("mgmt", "not methylated", "unmethylated"),
        ("mgmt", "na", ""),
    ],
)
def test_lumiere_label(label: str, value: str, expected: str | None) -> None:
    assert lumiere_label(label, value) == expected


def test_cli_ingest_lumiere(imaging: Path, tmp_path: Path) -> None:
    ratings = ratings_csv(
        tmp_path / "ratings.csv", [("Patient-001", "week-000-2", "Post-Op"), ("Patient-001", "week-044", "PD")]
    )
    out = imaging / "lumiere.csv"
    args = ["ingest", "lumiere", str(imaging), "--ratings", str(ratings), "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "8 exams" in result.output
    manifest = Manifest.read(out)
    assert validate(manifest) == []
    assert manifest.table["outcome"].tolist() == ["", "", "", "progression", "", "", "", ""]
