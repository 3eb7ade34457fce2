"""The EGD adapter on a small replica: SUBJECTS/ and XNAT-style subject folders, MASK as the tumour
segmentation, the shared atlas brain mask, the labels table's 1 / 0 / -1 coding, and `umbif ingest egd`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import save_nifti
from umbif.cli import app
from umbif.data.manifest import Manifest, errors, validate
from umbif.data.sources.egd import egd_label, ingest_egd


def write(root: Path, *names: str) -> Path:
    """2^3 volumes at ``root/name``."""
    for name in names:
        save_nifti(root / name, np.zeros((2, 2, 2), np.float32), np.eye(4))
    return root


@pytest.fixture
def egd(tmp_path: Path) -> Path:
    """EGD-0001 complete, EGD-0002 (as XNAT delivers it) without T2, EGD-0010 with a stray file, the atlas masks,
    and an image outside any subject folder."""
    return write(
        tmp_path / "egd",
        *(f"SUBJECTS/EGD-0001/{n}.nii.gz" for n in ("T1", "T1GD", "T2", "FLAIR", "MASK")),
        "MR_EGD-0002/1_T1/NIFTI/T1.nii.gz",
        "MR_EGD-0002/2_T1GD/NIFTI/T1GD.nii.gz",
        "MR_EGD-0002/4_FLAIR/NIFTI/FLAIR.nii.gz",
        "MR_EGD-0002/5_MASK/NIFTI/MASK.nii.gz",
        "SUBJECTS/EGD-0010/FLAIR.nii.gz",
        "SUBJECTS/EGD-0010/T1_axial_slices.nii.gz",
        "METADATA/Brain_mask.nii.gz",
        "METADATA/Deface_mask.nii.gz",
        "extra/FLAIR.nii.gz",
    )


def labels_table(path: Path, rows: list[tuple[str, str, str, str]], sep: str = "\t") -> Path:
    """``Genetic_and_Histological_labels`` with (Subject, IDH, 1p19q, Grade) per row."""
    pd.DataFrame(rows, columns=["Subject", "IDH", "1p19q", "Grade"]).to_csv(path, index=False, sep=sep)
    return path


def test_layout(egd: Path) -> None:
    report = ingest_egd(egd)
    table = report.manifest.table
    assert table[["exam_id", "patient_id", "timepoint", "site"]].values.tolist() == [
        ["EGD-0001", "EGD-0001", "", "EGD"],
        ["EGD-0002", "EGD-0002", "", "EGD"],
        ["EGD-0010", "EGD-0010", "", "EGD"],
    ]
    assert table.iloc[0][["t1", "t1c", "t2", "flair", "seg", "brain_mask"]].tolist() == [
        "SUBJECTS/EGD-0001/T1.nii.gz",
        "SUBJECTS/EGD-0001/T1GD.nii.gz",
        "SUBJECTS/EGD-0001/T2.nii.gz",
        "SUBJECTS/EGD-0001/FLAIR.nii.gz",
        "SUBJECTS/EGD-0001/MASK.nii.gz",  # MASK is the tumour, not the brain
        "METADATA/Brain_mask.nii.gz",  # one atlas mask for every exam
    ]
    assert table.iloc[1][["t1c", "t2", "seg"]].tolist() == [
        "MR_EGD-0002/2_T1GD/NIFTI/T1GD.nii.gz",
        "",
        "MR_EGD-0002/5_MASK/NIFTI/MASK.nii.gz",
    ]
    assert report.problems == [
        "extra/FLAIR.nii.gz: not inside a subject folder (EGD-0001); skipped",
        "SUBJECTS/EGD-0010/T1_axial_slices.nii.gz: not one of T1, T1GD, T2, FLAIR, MASK; skipped",
    ]
    assert errors(validate(report.manifest)) == []


def test_same_subject_twice_uses_neither_copy(egd: Path) -> None:
    write(egd, "copy/EGD-0001/T1.nii.gz")
    report = ingest_egd(egd)
    assert report.manifest.table.iloc[0]["t1"] == ""
    assert "EGD-0001: several files for t1 (T1.nii.gz, T1.nii.gz); none used, keep one" in report.problems


@pytest.mark.parametrize("sep", ["\t", ","])
def test_labels(egd: Path, tmp_path: Path, sep: str) -> None:
    suffix = ".tsv" if sep == "\t" else ".csv"
    table = labels_table(
        tmp_path / f"Genetic_and_Histological_labels{suffix}",
        [
            ("EGD-0001", "1", "1", "2"),
            ("EGD-0002", "0", "-1", "4"),
            ("EGD-0010", "-1", "2", "-1"),
            ("EGD-0774", "1", "0", "3"),
        ],
        sep,
    )
    report = ingest_egd(egd, labels=table)
    labels = report.manifest.table.set_index("exam_id")[["idh", "codeletion_1p19q", "mgmt"]]
    assert labels.to_dict("index") == {
        "EGD-0001": {"idh": "mutant", "codeletion_1p19q": "codeleted", "mgmt": ""},
        "EGD-0002": {"idh": "wildtype", "codeletion_1p19q": "", "mgmt": ""},
        "EGD-0010": {"idh": "", "codeletion_1p19q": "", "mgmt": ""},
    }
    assert report.problems[2:] == [
        f"{table.name} row 3, column 1p19q: value '2' not recognised (codeleted / intact); left empty",
        f"{table.name}: 1 subjects match no patient: EGD-0774",
    ]


@pytest.mark.parametrize(
    ("label", "value", "expected"),
    [
        ("idh", "1", "mutant"),
        ("idh", "0", "wildtype"),
        ("idh", "-1", ""),
        ("idh", "1.0", "mutant"),
        ("codeletion_1p19q", "1", "codeleted"),
        ("codeletion_1p19q", "0", "intact"),
        ("codeletion_1p19q", " -1 ", ""),
        ("codeletion_1p19q", "", ""),
        ("mgmt", "1", "methylated"),
        ("mgmt", "0", "unmethylated"),
        ("idh", "2", None),
        ("idh", "mutant", None),  # EGD codes numbers only: a word is reported, not guessed
    ],
)
def test_egd_label(label: str, value: str, expected: str | None) -> None:
    assert egd_label(label, value) == expected


def test_cli_ingest_egd(egd: Path, tmp_path: Path) -> None:
    table = labels_table(tmp_path / "labels.tsv", [("EGD-0002", "0", "0", "4")])
    result = CliRunner().invoke(app, ["ingest", "egd", str(egd), "--labels", str(table)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "3 exams" in result.output
    assert "not inside a subject folder" in result.output
    manifest = Manifest.read(egd / "manifest.csv")
    assert validate(manifest) == []
    assert manifest.table["codeletion_1p19q"].tolist() == ["", "intact", ""]
