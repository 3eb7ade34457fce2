"""The RSNA-MICCAI MGMT adapter on a small replica of its layout: slices ordered by position although
their names sort otherwise, integer case ids, labels mapped, known bad cases and stray files reported,
a rerun that resumes, and the `umbif ingest rsna` command."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/data holds the DICOM factory
from dicom_factory import CORONAL, write_series

from umbif.cli import app
from umbif.data.pseudonym import Pseudonymiser
from umbif.data.sources.rsna import case_id, ingest_rsna, mgmt_label

FOLDERS = {"FLAIR": (9000.0, 120.0), "T1w": (500.0, 10.0), "T1wCE": (500.0, 10.0), "T2w": (4000.0, 100.0)}
NAME_ORDER = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]  # Image-1 is the top slice: name order is not position order


def write_case(train: Path, case: str, folders=FOLDERS, seed: int = 0) -> dict[str, np.ndarray]:
    """One case folder with 16x12x10 series named Image-1..Image-10; returns the written values."""
    values = {}
    for index, (folder, (tr, te)) in enumerate(folders.items()):
        written = write_series(
            train / case / folder,
            study=case,
            series=index + 1,
            description=folder,
            shape=(16, 12, 10),
            order=NAME_ORDER,
            names=lambda n: f"Image-{n}.dcm",
            orientation=CORONAL if folder == "T2w" else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            tr=tr,
            te=te,
            seed=seed + index,
        )
        values[folder] = written.values
    return values


@pytest.fixture
def replica(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "rsna-miccai-brain-tumor-radiogenomic-classification"
    values = write_case(root / "train", "00012")
    write_case(root / "train", "00005", folders={"T1w": FOLDERS["T1w"]}, seed=7)
    write_case(root / "train", "00109", folders={"T1w": FOLDERS["T1w"]})
    (root / "train" / "00012" / "T1w" / "Thumbs.db").write_bytes(b"\x00")
    (root / "train" / "00012" / "notes.txt").write_text("x")
    (root / "train" / "stray").mkdir()
    (root / "extra.zip").write_bytes(b"")
    (root / "train_labels.csv").write_text("BraTS21ID,MGMT_value\n12,1\n5,0\n109,1\n77,0\n13,maybe\n")
    return root, values


def test_replica(replica, tmp_path: Path) -> None:
    root, values = replica
    report = ingest_rsna(root, tmp_path / "out")
    table = report.manifest.table
    assert table[["exam_id", "patient_id", "mgmt", "rsna_split"]].values.tolist() == [
        ["rsna-00005", "00005", "unmethylated", "train"],
        ["rsna-00012", "00012", "methylated", "train"],
    ]
    assert set(table["site"]) == {"RSNA-MGMT"} and set(table["timepoint"]) == {""}  # never the folder name
    assert table.loc[0, ["t1", "t1c", "t2", "flair"]].tolist() == ["rsna-00005/t1.nii.gz", "", "", ""]
    exam = report.manifest.exam(1)
    for folder, sequence in {"FLAIR": "flair", "T1w": "t1", "T1wCE": "t1c", "T2w": "t2"}.items():
        volume = nib.load(exam.sequences[sequence]).get_fdata()
        np.testing.assert_array_equal(volume, values[folder])  # slices in position order, not Image-1, Image-10, ...
    assert sorted(report.problems) == sorted(
        [
            "extra.zip: not part of the RSNA-MGMT layout (train/, test/, train_labels.csv)",
            "train/stray: not a case folder (5 digits); ignored",
            "train/00012/notes.txt: not a sequence folder (FLAIR, T1w, T1wCE, T2w); ignored",
            "train/00012/T1w/Thumbs.db: not an Image-N.dcm file; ignored",
            "train/00109: known bad case (the organisers excluded 00109, 00123, 00709); skipped",
            "train_labels.csv row 5, column MGMT_value: value 'maybe' not recognised (0 / 1); left empty",
            "train_labels.csv: 2 labelled cases have no folder: 00013, 00077",
        ]
    )


def test_train_folder_as_root_pseudonyms_and_resume(replica, tmp_path: Path) -> None:
    root, _ = replica
    pseudonymiser = Pseudonymiser(b"k" * 32)
    report = ingest_rsna(root / "train", tmp_path / "out", pseudonymiser)  # labels found next to train/
    table = report.manifest.table
    assert table["patient_id"].tolist() == [pseudonymiser.patient("00005"), pseudonymiser.patient("00012")]
    assert table["exam_id"].tolist() == [pseudonymiser.exam(c, "rsna-mgmt") for c in ("00005", "00012")]
    assert table["mgmt"].tolist() == ["unmethylated", "methylated"]
    flair = report.manifest.exam(1).sequences["flair"]
    before = flair.stat().st_mtime_ns
    again = ingest_rsna(root / "train", tmp_path / "out", pseudonymiser)
    assert again.manifest.table.equals(table) and flair.stat().st_mtime_ns == before  # kept, not rewritten


def test_a_refused_series_leaves_the_rest_of_the_case(tmp_path: Path) -> None:
    train = tmp_path / "train"
    write_case(train, "00003", folders={"T1w": FOLDERS["T1w"], "T2w": FOLDERS["T2w"]})
    (train / "00003" / "T2w" / "Image-4.dcm").unlink()  # a missing slice
    report = ingest_rsna(train, tmp_path / "out")
    assert report.manifest.table.loc[0, ["t1", "t2"]].tolist() == ["rsna-00003/t1.nii.gz", ""]
    assert len(report.problems) == 1 and report.problems[0].startswith("00003/T2w: t2 not converted, slice")
    assert report.problems[0].endswith("a missing slice?")


@pytest.mark.parametrize(("value", "expected"), [("1", "methylated"), ("0", "unmethylated"), ("1.0", "methylated"),
                                                 ("", ""), ("2", None), ("yes", None)])  # fmt: skip
def test_mgmt_label(value: str, expected: str | None) -> None:
    assert mgmt_label(value) == expected


@pytest.mark.parametrize(("value", "expected"), [("12", "00012"), ("00012", "00012"), ("709", "00709"),
                                                 ("12.0", "00012"), ("BraTS-12", None), ("123456", None)])  # fmt: skip
def test_case_id(value: str, expected: str | None) -> None:
    assert case_id(value) == expected


def test_not_the_layout(tmp_path: Path) -> None:
    (tmp_path / "something").mkdir()
    with pytest.raises(ValueError, match="neither train/ nor 5-digit case folders"):
        ingest_rsna(tmp_path, tmp_path / "out")


def test_cli(replica, tmp_path: Path) -> None:
    root, _ = replica
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ingest", "rsna", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "known bad case" in result.output and "2 exams, 7 files or rows reported" in result.output
    assert (out / "manifest.csv").is_file() and (out / "rsna-00012" / "t1c.nii.gz").is_file()
    missing = CliRunner().invoke(app, ["ingest", "rsna", str(root), "--out", str(out), "--key-file", "nope.key"])
    assert missing.exit_code == 1 and missing.output.startswith("error: key file nope.key does not exist")
