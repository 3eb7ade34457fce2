"""The UCSF-PDGM adapter on a small replica of the release: plain and bias-corrected images, masks,
maps it skips, a follow-up exam, the metadata table's three-digit ids and label values, and the
`umbif ingest ucsf` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import save_nifti
from umbif.cli import app
from umbif.data.manifest import Manifest, errors, validate
from umbif.data.sources.ucsf import ingest_ucsf, ucsf_label

RELEASE = "UCSF-PDGM-v3"
STRUCTURAL = ("T1", "T1c", "T2", "FLAIR")
MAPS = ("ADC", "DWI", "DWI_bias", "SWI", "SWI_bias", "ASL", "DTI_eddy_FA", "DTI_eddy_L1")
MAPS += ("brain_parenchyma_segmentation",)


def write_exam(root: Path, folder: str, kinds: tuple[str, ...]) -> None:
    """``root/RELEASE/folder/<id>_<kind>.nii.gz`` (2^3 volumes) per kind; <id> is the folder without _nifti."""
    exam = folder.removesuffix("_nifti")
    for kind in kinds:
        save_nifti(root / RELEASE / folder / f"{exam}_{kind}.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """Patient 4 with every file of the release and one unknown map; patient 433 with a baseline and a
    follow-up that has only bias-corrected images; a folder that is not an exam."""
    root = tmp_path / "ucsf"
    full = STRUCTURAL + tuple(f"{k}_bias" for k in STRUCTURAL) + MAPS
    write_exam(root, "UCSF-PDGM-0004_nifti", (*full, "tumor_segmentation", "brain_segmentation", "perfusion"))
    (root / RELEASE / "UCSF-PDGM-0004_nifti" / "UCSF-PDGM-0004_DTI.bval").write_text("0 1000\n")  # not NIfTI: quiet
    write_exam(root, "UCSF-PDGM-0433_nifti", ("T1c", "FLAIR"))
    write_exam(root, "UCSF-PDGM-0433_FU007d_nifti", ("T1c_bias", "tumor_segmentation"))
    write_exam(root, "scratch", ("T1c",))
    return root


def metadata(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A metadata table with the release's columns: (ID, IDH, MGMT status, 1p/19q) per row."""
    frame = pd.DataFrame(rows, columns=["ID", "IDH", "MGMT status", "1p/19q"])
    frame.insert(1, "Final pathologic diagnosis (WHO 2021)", "Glioblastoma, IDH-wildtype")  # quoted commas
    frame.to_csv(path, index=False)
    return path


def test_layout(release: Path) -> None:
    report = ingest_ucsf(release)
    table = report.manifest.table
    assert [tuple(r) for r in table[["exam_id", "patient_id", "timepoint", "site"]].values] == [
        ("UCSF-PDGM-0004", "UCSF-PDGM-0004", "0", "UCSF-PDGM"),
        ("UCSF-PDGM-0433", "UCSF-PDGM-0433", "0", "UCSF-PDGM"),
        ("UCSF-PDGM-0433_FU007d", "UCSF-PDGM-0433", "1", "UCSF-PDGM"),
    ]
    folder = f"{RELEASE}/UCSF-PDGM-0004_nifti/UCSF-PDGM-0004"
    assert table.iloc[0][["t1", "t1c", "t2", "flair", "seg", "brain_mask"]].tolist() == [
        f"{folder}_T1.nii.gz",  # the plain image, not _bias
        f"{folder}_T1c.nii.gz",
        f"{folder}_T2.nii.gz",
        f"{folder}_FLAIR.nii.gz",
        f"{folder}_tumor_segmentation.nii.gz",
        f"{folder}_brain_segmentation.nii.gz",
    ]
    assert table.iloc[2]["t1c"] == f"{RELEASE}/UCSF-PDGM-0433_FU007d_nifti/UCSF-PDGM-0433_FU007d_T1c_bias.nii.gz"
    assert report.problems == [
        f"{RELEASE}/scratch: not a UCSF-PDGM exam folder (UCSF-PDGM-0004_nifti); its 1 NIfTI files skipped",
        f"{RELEASE}/UCSF-PDGM-0004_nifti: UCSF-PDGM-0004_perfusion.nii.gz: map 'perfusion' not recognised; skipped",
        f"{RELEASE}/UCSF-PDGM-0433_FU007d_nifti: no plain t1c image; "
        "UCSF-PDGM-0433_FU007d_T1c_bias.nii.gz used instead",
    ]
    assert errors(validate(report.manifest)) == []


def test_bias_corrected_images(release: Path) -> None:
    report = ingest_ucsf(release, bias_corrected=True)
    row = report.manifest.table.iloc[0]
    assert row["t1"].endswith("UCSF-PDGM-0004_T1_bias.nii.gz")
    assert row["flair"].endswith("UCSF-PDGM-0004_FLAIR_bias.nii.gz")
    assert report.manifest.table.iloc[1]["t1c"].endswith("UCSF-PDGM-0433_T1c.nii.gz")
    assert f"{RELEASE}/UCSF-PDGM-0433_nifti: no bias-corrected t1c image; UCSF-PDGM-0433_T1c.nii.gz used instead" in (
        report.problems
    )


def test_metadata_labels(release: Path, tmp_path: Path) -> None:
    table = metadata(
        tmp_path / "UCSF-PDGM-metadata_v2.csv",
        [
            ("UCSF-PDGM-004", "IDH1 p.R132H", "positive", "relative co-deletion"),  # 3-digit id of folder 0004
            ("UCSF-PDGM-433", "wildtype", "negative", "intact"),
            ("UCSF-PDGM-0433_FU007d", "wildtype", "unknown", "co-deletion"),  # follow-up row: disagrees on 1p/19q
            ("UCSF-PDGM-999", "wildtype", "positive", "intact"),
            ("UCSF-PDGM-5", "mutated (NOS)", "weakly positive", "unknown"),
            ("Patient 12", "wildtype", "negative", "intact"),
        ],
    )
    report = ingest_ucsf(release, labels=table)
    labels = report.manifest.table.set_index("exam_id")[["idh", "mgmt", "codeletion_1p19q"]]
    assert labels.to_dict("index") == {
        "UCSF-PDGM-0004": {"idh": "mutant", "mgmt": "methylated", "codeletion_1p19q": ""},
        "UCSF-PDGM-0433": {"idh": "wildtype", "mgmt": "unmethylated", "codeletion_1p19q": ""},
        "UCSF-PDGM-0433_FU007d": {"idh": "wildtype", "mgmt": "unmethylated", "codeletion_1p19q": ""},
    }
    assert report.problems[3:] == [
        "UCSF-PDGM-metadata_v2.csv row 5, column MGMT status: value 'weakly positive' not recognised "
        "(methylated / unmethylated); left empty",
        "UCSF-PDGM-metadata_v2.csv row 6: ID 'Patient 12' is not a subject id; row skipped",
        "UCSF-PDGM-metadata_v2.csv: rows of UCSF-PDGM-0433 disagree on codeletion_1p19q "
        "(intact in row 2, codeleted in row 3); left empty",
        "UCSF-PDGM-metadata_v2.csv: 2 subjects match no patient: UCSF-PDGM-0999, UCSF-PDGM-0005",
    ]


def test_metadata_without_a_label_column_or_id(release: Path, tmp_path: Path) -> None:
    partial = tmp_path / "v1.csv"
    pd.DataFrame({"ID": ["UCSF-PDGM-004"], "IDH": ["wildtype"]}).to_csv(partial, index=False)
    report = ingest_ucsf(release, labels=partial)
    assert report.manifest.table.iloc[0][["idh", "mgmt"]].tolist() == ["wildtype", ""]
    assert report.problems[3:] == [
        "v1.csv: no column 'MGMT status'; mgmt left empty",
        "v1.csv: no column '1p/19q'; codeletion_1p19q left empty",
    ]
    pd.DataFrame({"Subject": ["UCSF-PDGM-004"]}).to_csv(partial, index=False)
    with pytest.raises(ValueError, match=r"v1\.csv: no column 'ID'; columns found: Subject"):
        ingest_ucsf(release, labels=partial)


def test_no_exam_raises(tmp_path: Path) -> None:
    write_exam(tmp_path / "ucsf", "UCSF-PDGM-0004_nifti", ("ADC",))
    with pytest.raises(ValueError, match=r"no exam could be built .* no T1, T1c, T2 or FLAIR image"):
        ingest_ucsf(tmp_path / "ucsf")


@pytest.mark.parametrize(
    ("label", "value", "expected"),
    [
        ("idh", "wildtype", "wildtype"),
        ("idh", "mutated (NOS)", "mutant"),
        ("idh", "IDH1 p.R132H", "mutant"),
        ("idh", "IDH1 p.Arg132His", "mutant"),
        ("idh", "IDH2 p.R172K", "mutant"),
        ("idh", " unknown ", ""),
        ("idh", "IDH1 p.R100Q", None),  # not a hotspot variant the release lists: reported, not guessed
        ("mgmt", "positive", "methylated"),
        ("mgmt", "negative", "unmethylated"),
        ("mgmt", "indeterminate", ""),
        ("mgmt", "", ""),
        ("mgmt", "methylated", None),
        ("codeletion_1p19q", "co-deletion", "codeleted"),
        ("codeletion_1p19q", "Co-deletion", "codeleted"),
        ("codeletion_1p19q", "relative co-deletion", ""),
        ("codeletion_1p19q", "intact", "intact"),
        ("codeletion_1p19q", "unknown", ""),
        ("codeletion_1p19q", "1p deleted", None),
    ],
)
def test_ucsf_label(label: str, value: str, expected: str | None) -> None:
    assert ucsf_label(label, value) == expected


def test_cli_ingest_ucsf(release: Path, tmp_path: Path) -> None:
    table = metadata(tmp_path / "meta.csv", [("UCSF-PDGM-004", "wildtype", "negative", "intact")])
    out = release / "ucsf.csv"
    args = ["ingest", "ucsf", str(release), "--labels", str(table), "--out", str(out), "--bias-corrected"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "3 exams" in result.output
    assert "map 'perfusion' not recognised" in result.output
    manifest = Manifest.read(out)
    assert validate(manifest) == []
    assert manifest.table["idh"].tolist() == ["wildtype", "", ""]
    assert manifest.table["t1"].iloc[0].endswith("_T1_bias.nii.gz")
