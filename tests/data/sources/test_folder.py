"""The folder adapter and what it shares with every adapter: finding exam folders, placing files by
name, patient/exam nesting, the labels CSV join, and the `umbif ingest folder` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import brain_phantom, save_nifti
from umbif import SEQUENCES
from umbif.cli import app
from umbif.data.manifest import Manifest, errors, validate
from umbif.data.sequences import alias_table
from umbif.data.sources.common import join_labels, normalise_label
from umbif.data.sources.folder import ingest_folder

ENV = {"COLUMNS": "200"}  # wide enough that Rich does not wrap a warning line


def write_niftis(root: Path, *names: str) -> Path:
    """Tiny 8^3 NIfTI files at ``root/name`` for each name; returns ``root``."""
    for name in names:
        save_nifti(root / name, brain_phantom((8, 8, 8)), np.eye(4))
    return root


def row_of(report, exam_id: str) -> dict[str, str]:
    table = report.manifest.table
    rows = table[table["exam_id"] == exam_id]
    assert len(rows) == 1, f"{exam_id} not in {list(table['exam_id'])}"
    return rows.iloc[0].to_dict()


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param(
            [
                "UCSF-PDGM-0004_T1_bias.nii.gz",
                "UCSF-PDGM-0004_T1c_bias.nii.gz",
                "UCSF-PDGM-0004_T2_bias.nii.gz",
                "UCSF-PDGM-0004_FLAIR_bias.nii.gz",
                "UCSF-PDGM-0004_tumor_segmentation.nii.gz",
                "UCSF-PDGM-0004_brain_segmentation.nii.gz",
                "UCSF-PDGM-0004_brain_parenchyma_segmentation.nii.gz",  # ignored: a tissue map
            ],
            {
                "t1": "UCSF-PDGM-0004_T1_bias.nii.gz",
                "t1c": "UCSF-PDGM-0004_T1c_bias.nii.gz",
                "t2": "UCSF-PDGM-0004_T2_bias.nii.gz",
                "flair": "UCSF-PDGM-0004_FLAIR_bias.nii.gz",
                "seg": "UCSF-PDGM-0004_tumor_segmentation.nii.gz",
                "brain_mask": "UCSF-PDGM-0004_brain_segmentation.nii.gz",
            },
            id="ucsf-pdgm",
        ),
        pytest.param(
            ["00001_t1n.nii.gz", "00001_t1c.nii.gz", "00001_t2w.nii.gz", "00001_t2f.nii.gz"],
            {
                "t1": "00001_t1n.nii.gz",
                "t1c": "00001_t1c.nii.gz",
                "t2": "00001_t2w.nii.gz",
                "flair": "00001_t2f.nii.gz",
            },
            id="upenn-sample",
        ),
        pytest.param(
            ["UPENN-GBM-00001_11_T1.nii", "UPENN-GBM-00001_11_T1GD.nii", "UPENN-GBM-00001_11_segm.nii"],
            {
                "t1": "UPENN-GBM-00001_11_T1.nii",
                "t1c": "UPENN-GBM-00001_11_T1GD.nii",
                "seg": "UPENN-GBM-00001_11_segm.nii",
            },
            id="upenn-gbm-uncompressed",
        ),
        pytest.param(
            ["BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t1ce.nii.gz", "BraTS2021_00000_seg.nii.gz"],
            {
                "t1": "BraTS2021_00000_t1.nii.gz",
                "t1c": "BraTS2021_00000_t1ce.nii.gz",
                "seg": "BraTS2021_00000_seg.nii.gz",
            },
            id="brats2021-names",
        ),
    ],
)
def test_files_are_placed_by_name(tmp_path: Path, names: list[str], expected: dict[str, str]) -> None:
    root = write_niftis(tmp_path / "cohort", *(f"exam1/{n}" for n in names))
    report = ingest_folder(root)
    row = row_of(report, "exam1")
    for column in (*SEQUENCES, "brain_mask", "seg"):
        assert row[column] == (f"exam1/{expected[column]}" if column in expected else ""), column
    assert report.problems == []


def test_depth_one_exams(tmp_path: Path) -> None:
    root = write_niftis(tmp_path / "siteX", "b/b_t1.nii.gz", "a/a_flair.nii.gz", ".trash/c_t1.nii.gz")
    (root / "a" / "a_flair.json").write_text("{}")  # sidecars (and hidden folders) are skipped quietly
    report = ingest_folder(root)
    table = report.manifest.table
    assert list(table["exam_id"]) == ["a", "b"]
    assert list(table["patient_id"]) == ["a", "b"]
    assert list(table["timepoint"]) == ["", ""]
    assert list(table["site"]) == ["siteX", "siteX"]
    assert ingest_folder(root, site="hospital").manifest.table["site"].tolist() == ["hospital", "hospital"]


def test_patient_exam_nesting_orders_timepoints_naturally(tmp_path: Path) -> None:
    root = write_niftis(
        tmp_path / "data",
        "p1/visit10/t1.nii.gz",
        "p1/visit2/t1.nii.gz",
        "p1/visit1/t1.nii.gz",
        "p2/baseline/flair.nii.gz",
    )
    table = ingest_folder(root).manifest.table
    got = {r.exam_id: (r.patient_id, r.timepoint, r.t1 or r.flair) for r in table.itertuples()}
    assert got == {
        "p1_visit1": ("p1", "0", "p1/visit1/t1.nii.gz"),
        "p1_visit2": ("p1", "1", "p1/visit2/t1.nii.gz"),
        "p1_visit10": ("p1", "2", "p1/visit10/t1.nii.gz"),
        "p2_baseline": ("p2", "0", "p2/baseline/flair.nii.gz"),
    }
    assert list(table["exam_id"]) == ["p1_visit1", "p1_visit2", "p1_visit10", "p2_baseline"]


def test_root_itself_is_one_exam(tmp_path: Path) -> None:
    root = write_niftis(tmp_path / "upenn-gbm-sample", "00001_t1n.nii.gz", "00001_t2f.nii.gz")
    row = row_of(ingest_folder(root), "upenn-gbm-sample")
    assert (row["patient_id"], row["t1"], row["flair"], row["t1c"]) == (
        "upenn-gbm-sample",
        "00001_t1n.nii.gz",
        "00001_t2f.nii.gz",
        "",
    )


def test_unplaceable_files_are_reported_and_missing_sequences_stay_empty(tmp_path: Path) -> None:
    root = write_niftis(
        tmp_path / "data",
        "p1/e1/UCSF-PDGM-0004_T1c_bias.nii.gz",
        "p1/e1/UCSF-PDGM-0004_ADC.nii.gz",
        "p1/e1/._UCSF-PDGM-0004_T1c_bias.nii.gz",  # a macOS resource copy: hidden, skipped
        "p1/e2/localizer.nii.gz",
        "p1/e2/tumor_seg.nii.gz",
    )
    report = ingest_folder(root)
    row = row_of(report, "p1_e1")
    assert row["t1c"] == "p1/e1/UCSF-PDGM-0004_T1c_bias.nii.gz"
    assert (row["t1"], row["t2"], row["flair"]) == ("", "", "")
    assert list(report.manifest.table["exam_id"]) == ["p1_e1"]  # e2 has no sequence
    assert len(report.problems) == 3
    adc, localizer, skipped = report.problems
    assert adc.startswith("p1/e1: UCSF-PDGM-0004_ADC.nii.gz: no sequence recognised")
    assert localizer.startswith("p1/e2: localizer.nii.gz")
    assert skipped.startswith("p1/e2: no t1, t1c, t2, flair") and "skipped" in skipped


def test_extra_aliases_place_new_names(tmp_path: Path) -> None:
    root = write_niftis(tmp_path / "data", "e1/mprage_gd.nii.gz", "e1/t1.nii.gz")
    assert row_of(ingest_folder(root), "e1")["t1c"] == ""
    row = row_of(ingest_folder(root, table=alias_table({"t1c": ["mprage_gd"]})), "e1")
    assert row["t1c"] == "e1/mprage_gd.nii.gz"


def test_missing_root_and_empty_root_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ingest_folder(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "scan.dcm").touch()
    with pytest.raises(ValueError, match=r"no NIfTI file .* under .*empty.*dcm2niix"):
        ingest_folder(tmp_path / "empty")
    write_niftis(tmp_path / "unnamed", "e1/series_004.nii.gz")
    with pytest.raises(ValueError, match=r"no exam could be built .* series_004"):
        ingest_folder(tmp_path / "unnamed")


def test_written_manifest_validates(tmp_path: Path) -> None:
    root = write_niftis(tmp_path / "data", "p1/e1/t1.nii.gz", "p1/e2/t1.nii.gz", "p2/e1/flair.nii.gz")
    report = ingest_folder(root)
    report.manifest.write(root / "manifest.csv")
    manifest = Manifest.read(root / "manifest.csv")
    assert validate(manifest) == []
    assert manifest.exam(0).sequences == {"t1": root.resolve() / "p1/e1/t1.nii.gz"}


def test_real_exam(upenn_sample: Path) -> None:
    report = ingest_folder(upenn_sample)
    row = row_of(report, upenn_sample.name)
    assert all(row[s] for s in SEQUENCES)
    assert report.problems == []
    assert errors(validate(report.manifest)) == []


# ------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize(
    ("column", "raw", "expected"),
    [
        ("idh", "IDH-mutant", "mutant"),
        ("idh", "Mutated", "mutant"),
        ("idh", "1", "mutant"),
        ("idh", "wild-type", "wildtype"),
        ("idh", "IDH_wildtype", "wildtype"),
        ("idh", "WT", "wildtype"),
        ("idh", "false", "wildtype"),
        ("mgmt", "Meth", "methylated"),
        ("mgmt", "positive", "methylated"),
        ("mgmt", "0", "unmethylated"),
        ("mgmt", "unmethylated", "unmethylated"),
        ("codeletion_1p19q", "co-deleted", "codeleted"),
        ("codeletion_1p19q", "yes", "codeleted"),
        ("codeletion_1p19q", "Not codeleted", "intact"),
        ("codeletion_1p19q", "non-codeleted", "intact"),
        ("outcome", "True progression", "progression"),
        ("outcome", "PD", "progression"),
        ("outcome", "Treatment effect", "treatment_effect"),
        ("outcome", "treatment_effect", "treatment_effect"),
        ("outcome", "PsP", "treatment_effect"),
        ("idh", "", ""),
        ("mgmt", "NA", ""),
        ("mgmt", " indeterminate ", ""),
        ("outcome", "Unknown", ""),
        ("idh", "maybe", None),
        ("mgmt", "yes", None),  # not a listed MGMT synonym: never guessed
        ("outcome", "stable", None),
    ],
)
def test_label_synonyms(column: str, raw: str, expected: str | None) -> None:
    assert normalise_label(column, raw) == expected


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    """p1 with two exams, p2 and p3 with one; all with a T1."""
    return write_niftis(tmp_path / "siteA", "p1/e1/t1.nii.gz", "p1/e2/t1.nii.gz", "p2/e1/t1.nii.gz", "p3/e1/t1.nii.gz")


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_labels_join_on_patient(nested: Path, tmp_path: Path) -> None:
    labels = write_csv(
        tmp_path / "labels.csv",
        [
            {
                "subject": "p1",
                "IDH": "IDH-mutant",
                "mgmt": "meth",
                "codeletion_1p19q": "co-deleted",
                "site": "B",
                "age": "54",
            },
            {"subject": "p2", "IDH": "maybe", "mgmt": "0", "codeletion_1p19q": "", "site": "", "age": "61"},
            {"subject": "p9", "IDH": "wt", "mgmt": "", "codeletion_1p19q": "", "site": "", "age": "70"},
            {"subject": "p2", "IDH": "maybe", "mgmt": "0", "codeletion_1p19q": "", "site": "", "age": "61"},
        ],
    )
    report = ingest_folder(nested, labels=labels)
    table = report.manifest.table.set_index("exam_id")
    for exam in ("p1_e1", "p1_e2"):  # a patient's labels reach all of its exams
        assert table.loc[exam, ["idh", "mgmt", "codeletion_1p19q", "site", "age"]].tolist() == [
            "mutant",
            "methylated",
            "codeleted",
            "B",
            "54",
        ]
    assert table.loc["p2_e1", ["idh", "mgmt", "site", "age"]].tolist() == ["", "unmethylated", "siteA", "61"]
    assert table.loc["p3_e1", ["idh", "mgmt", "site", "age"]].tolist() == ["", "", "siteA", ""]
    assert "subject" not in table.columns
    problems = "\n".join(report.problems)
    assert "labels.csv row 2, column IDH: value 'maybe' not recognised" in problems
    assert "labels.csv row 4: subject 'p2' also in row 2" in problems
    assert "labels.csv: 1 subjects match no patient: p9" in problems
    assert len(report.problems) == 4  # 'maybe' is reported for rows 2 and 4
    assert errors(validate(report.manifest)) == []


def test_labels_join_on_exam_and_conflicting_duplicates(nested: Path, tmp_path: Path) -> None:
    labels = write_csv(
        tmp_path / "outcome.csv",
        [
            {"exam": "p1_e2", "outcome": "pseudoprogression"},
            {"exam": "p2_e1", "outcome": "TP"},
            {"exam": "p2_e1", "outcome": "TE"},
        ],
    )
    report = ingest_folder(nested, labels=labels, subject_column="exam", join_on="exam")
    outcome = report.manifest.table.set_index("exam_id")["outcome"].to_dict()
    assert outcome == {"p1_e1": "", "p1_e2": "treatment_effect", "p2_e1": "", "p3_e1": ""}
    assert report.problems == [
        "outcome.csv row 3: subject 'p2_e1' also in row 2 with other values; its labels are not used"
    ]


def test_labels_numeric_ids_match_without_leading_zeros(tmp_path: Path) -> None:
    root = write_niftis(tmp_path / "data", "00002/t1.nii.gz", "00010/t1.nii.gz")
    labels = write_csv(tmp_path / "labels.csv", [{"id": "2", "idh": "mutant"}, {"id": "010", "idh": "wildtype"}])
    table = ingest_folder(root, labels=labels, subject_column="id").manifest.table
    assert table.set_index("patient_id")["idh"].to_dict() == {"00002": "mutant", "00010": "wildtype"}


def test_labels_without_subject_column_raise(nested: Path, tmp_path: Path) -> None:
    labels = write_csv(tmp_path / "labels.csv", [{"patient": "p1", "idh": "mutant"}])
    with pytest.raises(ValueError, match=r"labels\.csv: no column 'subject'; columns found: patient, idh"):
        ingest_folder(nested, labels=labels)
    with pytest.raises(ValueError, match="join_on"):
        join_labels(pd.DataFrame({"patient_id": ["p1"]}), labels, "patient", join_on="visit")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        ingest_folder(nested, labels=tmp_path / "missing.csv")


# --------------------------------------------------------------------------------------------- CLI
def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


def test_cli_ingest_folder_writes_a_valid_manifest(nested: Path, tmp_path: Path) -> None:
    labels = write_csv(tmp_path / "labels.csv", [{"subject": "p2", "idh": "mutated"}])
    result = invoke("ingest", "folder", str(nested), "--labels", str(labels), "--site", "S")
    assert result.exit_code == 0, result.output
    assert "4 exams" in result.output
    manifest = Manifest.read(nested / "manifest.csv")
    assert validate(manifest) == []
    assert manifest.table.set_index("exam_id")["idh"].to_dict() == {
        "p1_e1": "",
        "p1_e2": "",
        "p2_e1": "mutant",
        "p3_e1": "",
    }
    assert set(manifest.table["site"]) == {"S"}


def test_cli_aliases_yaml(tmp_path: Path) -> None:
    root = write_niftis(tmp_path / "data", "e1/mprage_gd.nii.gz", "e1/t2_tse.nii.gz")
    result = invoke("ingest", "folder", str(root), "--out", str(tmp_path / "m.csv"))
    assert result.exit_code == 0, result.output
    assert "mprage_gd.nii.gz: no sequence recognised" in result.output
    assert pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False)["t1c"].tolist() == [""]

    aliases = tmp_path / "aliases.yaml"
    aliases.write_text("aliases:\n  t1c: [mprage_gd]\n")
    result = invoke("ingest", "folder", str(root), "--out", str(tmp_path / "m.csv"), "--aliases", str(aliases))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False)
    assert table[["t1c", "t2"]].values.tolist() == [["data/e1/mprage_gd.nii.gz", "data/e1/t2_tse.nii.gz"]]
