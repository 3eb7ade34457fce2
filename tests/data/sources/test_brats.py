"""The BraTS adapter: 2021 and 2023 case folders, segmentations, timepoints, RSNA-MGMT labels
joined by unpadded case number, and the `umbif ingest brats` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import brain_phantom, save_nifti
from umbif.cli import app
from umbif.data.manifest import Manifest, validate
from umbif.data.sources.brats import ingest_brats

SUFFIXES_2021 = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}
SUFFIXES_2023 = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}


def write_case(root: Path, case: str, with_seg: bool = True) -> None:
    """One BraTS case folder ``root/case`` with 8^3 volumes; 2021 or 2023 names from the case name."""
    suffixes = SUFFIXES_2021 if case.startswith("BraTS2021_") else SUFFIXES_2023
    separator = "_" if case.startswith("BraTS2021_") else "-"
    for target, suffix in suffixes.items():
        if target != "seg" or with_seg:
            save_nifti(root / case / f"{case}{separator}{suffix}.nii.gz", brain_phantom((8, 8, 8)), np.eye(4))


def test_brats_2021(tmp_path: Path) -> None:
    root = tmp_path / "BraTS2021_Training_Data"
    write_case(root, "BraTS2021_00002")
    write_case(root, "BraTS2021_00000", with_seg=False)
    report = ingest_brats(root)
    table = report.manifest.table
    assert report.problems == []
    assert list(table["exam_id"]) == ["BraTS2021_00000", "BraTS2021_00002"]
    assert list(table["patient_id"]) == ["00000", "00002"]
    assert list(table["timepoint"]) == ["", ""]
    assert set(table["site"]) == {"BraTS2021_Training_Data"}
    case = table.iloc[1]
    for target, suffix in SUFFIXES_2021.items():
        assert case[target] == f"BraTS2021_00002/BraTS2021_00002_{suffix}.nii.gz"
    assert table.iloc[0]["seg"] == ""  # no seg: the column stays empty
    assert table.iloc[0]["t1c"] == "BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz"


@pytest.mark.parametrize("challenge", ["GLI", "MEN", "SSA", "PED"])
def test_brats_2023(tmp_path: Path, challenge: str) -> None:
    root = tmp_path / "train"
    for case in (f"BraTS-{challenge}-00012-001", f"BraTS-{challenge}-00012-000", f"BraTS-{challenge}-00003-000"):
        write_case(root / "nested", case)  # case folders may sit deeper than ROOT
    report = ingest_brats(root, site="brats23")
    table = report.manifest.table
    assert report.problems == []
    assert [tuple(r) for r in table[["exam_id", "patient_id", "timepoint"]].values] == [
        (f"BraTS-{challenge}-00003-000", "00003", "0"),
        (f"BraTS-{challenge}-00012-000", "00012", "0"),
        (f"BraTS-{challenge}-00012-001", "00012", "1"),
    ]
    case = table.iloc[2]
    for target, suffix in SUFFIXES_2023.items():
        assert case[target] == f"nested/BraTS-{challenge}-00012-001/BraTS-{challenge}-00012-001-{suffix}.nii.gz"
    assert set(table["site"]) == {"brats23"}
    assert validate(report.manifest) == []


def test_other_folders_are_reported_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_case(root, "BraTS-GLI-00000-000")
    write_case(root, "BraTS-MEN-00001-000")
    write_case(root, "copy of BraTS2021_00001")
    report = ingest_brats(root)
    assert list(report.manifest.table["exam_id"]) == ["BraTS-GLI-00000-000", "BraTS-MEN-00001-000"]
    assert len(report.problems) == 2
    assert report.problems[0].startswith("copy of BraTS2021_00001: not named like a BraTS case")
    assert "mixes the challenges GLI, MEN" in report.problems[1]


def test_no_brats_case_raises(tmp_path: Path) -> None:
    write_case(tmp_path / "data", "patient1")
    with pytest.raises(ValueError, match=r"no exam could be built .* not named like a BraTS case"):
        ingest_brats(tmp_path / "data")


@pytest.mark.parametrize(
    ("case", "join_on", "subject"),
    [
        ("BraTS2021_00002", "patient", "2"),  # RSNA-MGMT train_labels.csv: BraTS21ID unpadded
        ("BraTS-GLI-00002-000", "patient", "00002"),
        ("BraTS2021_00002", "exam", "BraTS2021_00002"),
    ],
)
def test_labels_join(tmp_path: Path, case: str, join_on: str, subject: str) -> None:
    root = tmp_path / "data"
    write_case(root, case)
    write_case(root, case.replace("00002", "00005"))
    labels = tmp_path / "train_labels.csv"
    pd.DataFrame({"BraTS21ID": [subject, "9"], "MGMT": ["1", "0"]}).to_csv(labels, index=False)
    report = ingest_brats(root, labels=labels, subject_column="BraTS21ID", join_on=join_on)
    mgmt = report.manifest.table.set_index("patient_id")["mgmt"].to_dict()
    assert mgmt == {"00002": "methylated", "00005": ""}
    assert report.problems == [f"train_labels.csv: 1 subjects match no {join_on}: 9"]


def test_cli_ingest_brats(tmp_path: Path) -> None:
    root = tmp_path / "BraTS2021"
    for case in ("BraTS2021_00000", "BraTS2021_00002"):
        write_case(root, case)
    labels = tmp_path / "labels.csv"
    labels.write_text("BraTS21ID,MGMT_value\n0,1\n2,0\n")
    out = tmp_path / "brats.parquet"
    args = ["ingest", "brats", str(root), "--out", str(out), "--labels", str(labels), "--subject-column", "BraTS21ID"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2 exams" in result.output
    manifest = Manifest.read(out)
    assert validate(manifest) == []
    assert manifest.table["seg"].tolist() == [
        f"BraTS2021/{c}/{c}_seg.nii.gz" for c in ("BraTS2021_00000", "BraTS2021_00002")
    ]
    # MGMT_value is not a label column name: kept as a free column, the mgmt label stays empty
    assert manifest.table["MGMT_value"].tolist() == ["1", "0"]
    assert manifest.table["mgmt"].tolist() == ["", ""]


def test_cli_ingest_brats_writes_into_root_by_default(tmp_path: Path) -> None:
    root = tmp_path / "BraTS2021"
    write_case(root, "BraTS2021_00000")
    result = CliRunner().invoke(app, ["ingest", "brats", str(root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert Manifest.read(root / "manifest.csv").table["t1c"].tolist() == ["BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz"]
