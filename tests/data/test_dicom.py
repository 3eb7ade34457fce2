"""DICOM ingest: geometry (slice order, oblique affines, rescale, refused stacks), series grouping and
screening, header classification, duplicates, pseudonymisation, and a grep of every output for the
input's identifiers. Series are written by ``dicom_factory``; pydicom's own test files are used where
they fit (never downloaded)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_factory import AXIAL, CORONAL, JANE, JOHN, SAGITTAL, oblique, output_texts, write_series
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from umbif.cli import app
from umbif.data.dicom import SeriesRules, classify, ingest_dicom
from umbif.data.dicom_io import (
    LPS_TO_RAS,
    Acquisition,
    GeometryError,
    convert,
    read_headers,
    read_pixels,
    stack_slices,
)
from umbif.data.manifest import validate
from umbif.data.pseudonym import Pseudonymiser, leaks

KEY = b"k" * 32


def headers_of(files: list[Path], root: Path):
    headers, problems = read_headers(files, root)
    assert problems == []
    return headers


def decisions(report) -> dict[int, tuple[str, str]]:
    """SeriesNumber -> (decision, reason) from the series table."""
    return {int(r.series_number): (r.decision, r.reason) for r in report.series.itertuples()}


# ----------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "orientation", [AXIAL, CORONAL, SAGITTAL, oblique(25.0)], ids=["axial", "coronal", "sagittal", "oblique"]
)
@pytest.mark.parametrize(("slope", "intercept", "dtype"), [(1.0, 0.0, np.int16), (2.5, -7.0, np.float32)])
def test_volume_geometry_and_values(tmp_path: Path, orientation, slope, intercept, dtype) -> None:
    written = write_series(tmp_path / "in", orientation=orientation, slope=slope, intercept=intercept)
    target = tmp_path / "t1.nii.gz"
    convert(headers_of(written.files, tmp_path), target)
    image = nib.load(target)
    np.testing.assert_allclose(image.affine, written.affine, atol=1e-5)
    assert image.get_data_dtype() == dtype
    np.testing.assert_allclose(image.get_fdata(), written.values, rtol=1e-6)
    rows, columns = 12, 16
    for k, path in enumerate(written.files):  # each slice's first voxel is its ImagePositionPatient, in RAS
        position = np.array([*pydicom.dcmread(path).ImagePositionPatient, 1.0])
        np.testing.assert_allclose(image.affine @ [0, 0, k, 1], LPS_TO_RAS @ position, atol=1e-4)
    corner = image.affine @ [columns - 1, rows - 1, 0, 1]  # last column and row: along both in-plane axes
    first = pydicom.dcmread(written.files[0])
    row, column = np.array(first.ImageOrientationPatient[:3]), np.array(first.ImageOrientationPatient[3:])
    lps = np.array(first.ImagePositionPatient) + row * (columns - 1) * 1.1 + column * (rows - 1) * 0.9
    np.testing.assert_allclose(corner, LPS_TO_RAS @ [*lps, 1.0], atol=1e-4)


def test_slices_sorted_by_position_not_name_or_instance_number(tmp_path: Path) -> None:
    order = [5, 1, 8, 2, 7, 3, 6, 4]  # slice k gets file name and InstanceNumber order[k]
    written = write_series(tmp_path / "in", order=order, orientation=oblique(-15.0))
    headers = headers_of(sorted(written.files), tmp_path)  # handed over in name order
    stack = stack_slices(headers)
    assert [h.path for h in stack.slices] == written.files
    target = tmp_path / "t1.nii.gz"
    convert(headers, target)
    np.testing.assert_array_equal(nib.load(target).get_fdata(), written.values)


def test_descending_positions_still_give_the_written_volume(tmp_path: Path) -> None:
    """Slices written from head to feet (negative step) come out in +normal order with a positive step."""
    written = write_series(tmp_path / "in", slice_step=-2.0)
    stack = stack_slices(headers_of(written.files, tmp_path))
    assert [h.path for h in stack.slices] == written.files[::-1]
    assert stack.affine[2, 2] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip": [3]}, r"not uniform: 6\.00 mm between .*S1_IM0003\.dcm and .*S1_IM0005\.dcm .*3\.00 mm: a missing"),
        ({"skip": [2, 3]}, r"not uniform: 9\.00 mm .* about 2 missing slices"),
        ({"tilt_degrees": 12.0}, r"12\.0 degrees off the slice normal\): gantry tilt"),
    ],
    ids=["missing-slice", "two-missing", "gantry-tilt"],
)
def test_irregular_stacks_refused(tmp_path: Path, kwargs, message) -> None:
    written = write_series(tmp_path / "in", **kwargs)
    with pytest.raises(GeometryError, match=message):
        stack_slices(headers_of(written.files, tmp_path))


def test_repeated_positions_refused(tmp_path: Path) -> None:
    """Two echoes of one series at the same positions are not one volume."""
    first = write_series(tmp_path / "in", te=10.0, names=lambda n: f"E1_{n}.dcm")
    second = write_series(tmp_path / "in", te=20.0, names=lambda n: f"E2_{n}.dcm")
    with pytest.raises(GeometryError, match="8 slices repeat the position of another"):
        stack_slices(headers_of(first.files + second.files, tmp_path))


def test_compressed_pixel_data_read_through_simpleitk() -> None:
    """pydicom has no JPEG-LS decoder here; the SimpleITK fallback gives the same values as the
    uncompressed copy of the same image (both ship with pydicom)."""
    plain = get_testdata_file("MR_small.dcm", download=False)
    jpeg_ls = get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False)
    expected = pydicom.dcmread(plain).pixel_array
    np.testing.assert_array_equal(read_pixels(Path(jpeg_ls)), expected)
    np.testing.assert_array_equal(read_pixels(Path(plain)), expected)


# ----------------------------------------------------------------------------------- classification
@pytest.mark.parametrize(
    ("acquisition", "kind", "sequence"),
    [
        (Acquisition("AX T1 SE", tr=550, te=9), "sequence", "t1"),
        (Acquisition("t1_mprage_sag_p2_iso", tr=2300, te=2.3, ti=900), "sequence", "t1"),
        (Acquisition("Sag 3D BRAVO", tr=8, te=3, ti=450), "sequence", "t1"),
        (Acquisition("AX T1 FLAIR", tr=2200, te=20, ti=860), "sequence", "t1"),  # GE T1-FLAIR is T1-weighted
        (Acquisition("AX T1 POST GD", tr=550, te=9), "sequence", "t1c"),
        (Acquisition("T1_SE_tra+C", tr=550, te=9), "sequence", "t1c"),
        (Acquisition("T1wCE"), "sequence", "t1c"),
        (Acquisition("MPRAGE", tr=2300, te=2.3, ti=900, contrast_agent="Gadovist 7.5ml"), "sequence", "t1c"),
        (Acquisition("T1 pre-contrast", tr=550, te=9), "sequence", "t1"),
        (Acquisition("AX T1 without contrast", tr=550, te=9), "sequence", "t1"),
        (Acquisition("AX T2 FSE", tr=4000, te=100), "sequence", "t2"),
        (Acquisition("t2_tse_tra", tr=5000, te=95), "sequence", "t2"),
        (Acquisition("AX T2 FLAIR", tr=9000, te=120, ti=2500), "sequence", "flair"),
        (Acquisition("t2_tirm_tra_dark-fluid", tr=9000, te=81, ti=2500), "sequence", "flair"),
        (Acquisition("3D FLAIR post", tr=5000, te=390, ti=1800), "sequence", "flair"),
        (Acquisition("", tr=9000, te=120, ti=2500), "sequence", "flair"),  # no name: timing alone
        (Acquisition("Series 3", tr=4500, te=105), "sequence", "t2"),
        (Acquisition("ep2d_diff_3scan_trace", tr=5000, te=90), "other", None),
        (Acquisition("AX DWI", tr=5000, te=90), "other", None),
        (Acquisition("SWI_Images", tr=28, te=20), "other", None),
        (Acquisition("AX T2* GRE", tr=600, te=20), "other", None),
        (Acquisition("TOF 3D multi-slab", tr=22, te=3.6), "other", None),
        (Acquisition("resting state", scanning_sequence=("EP",), tr=2000, te=30), "other", None),
        (Acquisition("AX something", tr=900, te=50), "other", None),  # fits no rule
        (Acquisition("AX T2", tr=9000, te=120, ti=2500), "ambiguous", None),  # name T2, timing FLAIR
        (Acquisition("T1 T2 combo", tr=550, te=9), "ambiguous", None),
        (Acquisition("T1 pre", tr=550, te=9, contrast_agent="Dotarem"), "ambiguous", None),  # pre but agent set
    ],
    ids=lambda value: value.description or "(none)" if isinstance(value, Acquisition) else str(value),
)
def test_classification(acquisition: Acquisition, kind: str, sequence: str | None) -> None:
    found = classify(acquisition)
    assert (found.kind, found.sequence) == (kind, sequence), found.reason


def test_rules_from_yaml(tmp_path: Path) -> None:
    config = tmp_path / "rules.yaml"
    config.write_text("t2:\n  names: 'dual_echo_late'\nother_scanning_sequences: []\nduplicates: none\n")
    rules = SeriesRules.from_yaml(config)
    assert classify(Acquisition("DUAL_ECHO_LATE", tr=3000, te=90), rules).sequence == "t2"
    assert classify(Acquisition("AX FLAIR", scanning_sequence=("EP",), tr=9000, te=90, ti=2500), rules).sequence == (
        "flair"  # echo-planar no longer makes a series "other"
    )
    assert rules.t2.ti_ms == SeriesRules().t2.ti_ms  # a rule given in part keeps the built-in rest
    config.write_text("t2:\n  ti_ms: [null, null]\n")
    unnamed = classify(Acquisition("", tr=9000, te=90, ti=2500), SeriesRules.from_yaml(config))
    assert (unnamed.kind, unnamed.reason) == ("ambiguous", "no name; TR 9000 TE 90 TI 2500 fit t2 and flair")
    config.write_text("flair:\n  names: 'flair('\n")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        SeriesRules.from_yaml(config)
    config.write_text("flare: {}\n")
    with pytest.raises(ValueError, match="flare"):
        SeriesRules.from_yaml(config)


# ------------------------------------------------------------------------------------------- ingest
def test_two_series_in_one_folder_and_rest_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    t1 = write_series(root / "folder", series=1, description="AX T1 SE", order=[3, 1, 2, 8, 4, 7, 6, 5])
    t2 = write_series(root / "folder", series=2, description="AX T2 FSE", tr=4000, te=100, seed=1)
    (root / "folder" / "notes.txt").write_text("not DICOM")
    broken = root / "folder" / "broken.dcm"
    broken.write_bytes(t1.files[0].read_bytes()[:200])
    (root / "DICOMDIR").write_bytes(b"")  # empty file: not DICOM either
    report = ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY), site="a")
    assert len(report.manifest) == 1
    exam = report.manifest.exam(0)
    assert set(exam.sequences) == {"t1", "t2"}
    np.testing.assert_array_equal(nib.load(exam.sequences["t1"]).get_fdata(), t1.values)
    np.testing.assert_array_equal(nib.load(exam.sequences["t2"]).get_fdata(), t2.values)
    # "folder" holds this exam's files only: it is named by the exam's pseudonym
    assert [p for p in report.problems if "notes.txt" in p] == [f"{exam.exam_id}/notes.txt: not a DICOM file; skipped"]
    assert [p for p in report.problems if "DICOMDIR" in p] == ["DICOMDIR: not a DICOM file; skipped"]
    assert any(p.startswith(f"{exam.exam_id}/broken.dcm: ") and p.endswith("skipped") for p in report.problems)
    assert len(report.problems) == 3
    assert not [p for p in validate(report.manifest) if p.severity == "error"]


def test_copies_ignored_and_output_inside_root_not_read(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    written = write_series(root / "export1", description="AX T1")
    (root / "export2").mkdir()
    shutil.copy(written.files[2], root / "export2" / "copy.dcm")
    out = root / "nifti"
    for _ in range(2):  # the second run must not read the first run's output
        report = ingest_dicom(root, out, Pseudonymiser(KEY), site="a")
        assert report.problems == [
            "1 file is a copy of another file (same SOPInstanceUID); each image is read from the first copy whose "
            "pixel data decodes: e.g. export1/S1_IM0003.dcm and export2/copy.dcm"
        ]
        np.testing.assert_array_equal(nib.load(report.manifest.exam(0).sequences["t1"]).get_fdata(), written.values)


def test_screened_series_skipped_with_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write_series(root / "t1", series=1)
    write_series(root / "loc", series=2, description="AAHead_Scout", shape=(16, 12, 3))
    for plane, orientation in enumerate((AXIAL, CORONAL, SAGITTAL)):  # one series, three planes
        write_series(
            root / "tri", series=3, description="Survey", orientation=orientation, shape=(16, 12, 3),
            names=lambda n, p=plane: f"P{p}_{n}.dcm",
        )  # fmt: skip
    write_series(root / "tri2", series=4, description="Tri", orientation=AXIAL, shape=(16, 12, 2),
                 names=lambda n: f"a{n}.dcm")  # fmt: skip
    write_series(root / "tri2", series=4, description="Tri", orientation=CORONAL, shape=(16, 12, 2),
                 names=lambda n: f"c{n}.dcm")  # fmt: skip
    write_series(root / "mpr", series=5, description="T1 MPR cor", image_type=("DERIVED", "SECONDARY", "MPR"))
    write_series(root / "enh", series=6, description="T2 3D", frames=2, shape=(16, 12, 1))
    write_series(root / "short", series=7, description="T2 single", shape=(16, 12, 2), tr=4000, te=100)
    shutil.copy(get_testdata_file("MR_small.dcm", download=False), root / "MR_small.dcm")
    report = ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY))
    found = decisions(report)
    assert found[1][0] == "t1"
    assert found[2] == found[3] == found[4] == ("skipped", "localizer")
    assert found[5] == ("skipped", "derived image (ImageType DERIVED/SECONDARY): not acquired data")
    assert found[6][0] == "skipped" and "multi-frame" in found[6][1]
    assert found[7] == ("skipped", "2 slices: not a volume (fewer than 3)")
    # pydicom's MR_small.dcm: a single DERIVED slice of another patient, its own exam, reported
    small = report.series[report.series["exam_id"] != report.manifest.table["exam_id"][0]]
    assert list(small["decision"]) == ["skipped"] and "derived" in small["reason"].iloc[0]
    assert any("(., 1 files): skipped, derived image" in p for p in report.problems)
    assert any(p.endswith("no t1, t1c, t2 or flair series could be converted; exam left out") for p in report.problems)
    written = pd.read_csv(tmp_path / "out" / "series.csv", dtype=str, keep_default_na=False)
    assert len(written) == 8 and set(written["decision"]) == {"t1", "skipped"}


def test_ambiguous_and_refused_series_reported_not_converted(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write_series(root / "a", series=1, description="AX T2", tr=9000, te=120, ti=2500)
    write_series(root / "b", series=2, description="AX FLAIR", tr=9000, te=120, ti=2500, skip=[4])
    write_series(root / "c", series=3, description="AX T1")
    write_series(root / "d", series=4, description="AX T2", tr=4000, te=100, scanning_sequence="EP")  # one value
    write_series(root / "e", series=5, description="AX T2", tr=4000, te=100, scanning_sequence=["SE", "EP"])
    report = ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY))
    found = decisions(report)
    assert found[4] == found[5] == ("other", "ScanningSequence EP")
    assert found[1] == ("ambiguous", "name says t2 but TR 9000 TE 120 TI 2500 fit flair")
    assert found[2][0] == "refused" and "a missing slice?" in found[2][1]
    assert report.manifest.table.loc[0, ["t1", "t2", "flair"]].tolist()[1:] == ["", ""]
    exam = report.manifest.table.loc[0, "exam_id"]
    assert f"{exam} series 1 'AX T2' (a, 8 files): ambiguous (name says t2 but TR 9000 TE 120 TI 2500 fit flair);" in (
        "\n".join(report.problems)
    )


@pytest.mark.parametrize("duplicates", ["prefer", "none"])
def test_duplicate_sequences_resolved_and_reported(tmp_path: Path, duplicates: str) -> None:
    root = tmp_path / "archive"
    write_series(root / "a", series=3, description="AX T1 post", contrast_agent="Gd")
    write_series(root / "b", series=9, description="MPRAGE post", tr=2300, te=3, ti=900, slice_step=1.0)
    write_series(root / "c", series=4, description="FLAIR +C", tr=9000, te=120, ti=2500)
    write_series(root / "d", series=2, description="FLAIR", tr=9000, te=120, ti=2500)
    write_series(root / "e", series=5, description="T2", tr=4000, te=100)
    write_series(root / "f", series=6, description="T2", tr=4000, te=100)
    write_series(root / "g", series=7, description="T1 SE")
    report = ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY), rules=SeriesRules(duplicates=duplicates))
    found = {n: d for n, (d, _) in decisions(report).items()}
    lines = [p.split(": ", 1)[1] for p in report.problems]
    if duplicates == "prefer":
        assert found == {3: "not used", 9: "t1c", 4: "not used", 2: "flair", 5: "not used", 6: "t2", 7: "t1"}
        assert any(line.startswith("t1c: 2 series fit:") and "kept series 9" in line for line in lines)
        assert any(line.startswith("flair: 2 series fit:") and "kept series 2" in line for line in lines)
        assert any(line.startswith("t2: 2 series fit:") and "kept series 6" in line for line in lines)
    else:
        assert found.pop(7) == "t1" and set(found.values()) == {"not used"}
        assert len([line for line in lines if "none used (duplicates: none)" in line]) == 3


def test_pseudonyms_and_timepoints(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write_series(root / "1", patient=JANE, study="baseline", study_date="20190514")
    write_series(root / "2", patient=JANE, study="follow-up", study_date="20190618")
    write_series(root / "3", patient=JOHN, study="only", study_date="20200101")
    pseudonymiser = Pseudonymiser(KEY)
    table = ingest_dicom(root, tmp_path / "out", pseudonymiser, site="hospitalA").manifest.table
    jane = pseudonymiser.patient(JANE.patient_id)
    assert sorted(table["patient_id"]) == sorted([jane, jane, pseudonymiser.patient(JOHN.patient_id)])
    assert sorted(table.loc[table["patient_id"] == jane, "timepoint"], key=int) == ["0", "35"]
    assert table.loc[table["patient_id"] != jane, "timepoint"].tolist() == ["0"]
    assert table["exam_id"].is_unique and set(table["site"]) == {"hospitalA"}
    assert all(path.startswith(f"{p}/{e}/") for p, e, path in table[["patient_id", "exam_id", "t1"]].values)
    other_key = ingest_dicom(root, tmp_path / "out2", Pseudonymiser(b"x" * 32)).manifest.table
    assert not set(other_key["patient_id"]) & set(table["patient_id"])


def test_progress_reported_per_stage(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write_series(root, series=1)
    write_series(root, series=2, description="T2", tr=4000, te=100)
    calls = []
    ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY), on_progress=lambda *args: calls.append(args))
    assert calls[-1] == ("convert", 2, 2) and ("headers", 16, 16) in calls


def test_no_identifier_reaches_any_output(tmp_path: Path) -> None:
    """Ingest series full of fake identifiers with the CLI, summarise and preprocess the result, then
    grep every output file (NIfTI decompressed, the header table decoded, the cache included) and everything
    printed for names, ids, birth dates, accession numbers, dates, UIDs."""
    root = tmp_path / "archive"
    identifiers: list[str] = []
    for folder, kwargs in {
        "s1": {"patient": JANE, "description": "AX T1 SE"},
        "s2": {"patient": JANE, "series": 2, "description": "AX T2 FSE", "tr": 4000, "te": 100},
        "s3": {"patient": JANE, "series": 3, "description": "T1 Quentina post", "contrast_agent": "Gd"},
        "s4": {"patient": JANE, "series": 4, "description": "AX T2", "tr": 9000, "te": 120, "ti": 2500},
        "s5": {"patient": JANE, "series": 5, "description": "FLAIR", "tr": 9000, "te": 120, "ti": 2500, "skip": [2]},
        "s6": {"patient": JOHN, "study": "second", "study_date": "20200220", "description": "T2 FLAIR", "ti": 2500,
               "tr": 9000, "te": 120},
    }.items():  # fmt: skip
        identifiers += write_series(root / folder, **kwargs).identifiers
    key_file = tmp_path / "secret" / "umbif.key"
    key_file.parent.mkdir()
    key_file.write_text("k" * 64)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["ingest", "dicom", str(root), "--out", str(out), "--key-file", str(key_file)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    series = pd.read_csv(out / "series.csv", dtype=str, keep_default_na=False)
    assert series.loc[series["series_number"] == "3", "description"].tolist() == ["<withheld: contains an identifier>"]
    # downstream too: the cache, its index and what the commands print
    cache = tmp_path / "cache"
    texts = [result.output]
    for args in (
        ["manifest", "summary", str(out / "manifest.csv")],
        ["preprocess", str(out / "manifest.csv"), "--out", str(cache), "--shape", "16x16x16"],
        ["cache", "info", str(cache)],
    ):
        step = CliRunner().invoke(app, args)
        assert step.exit_code == 0, step.output
        texts.append(step.output)
    assert any(cache.rglob("*.json")) and any((out / ".scan").glob("*.parquet"))  # the header table is searched too
    texts += output_texts(out) + output_texts(cache)
    assert len(texts) > 5
    assert len(set(identifiers)) > 50
    assert leaks(texts, identifiers) == []
    assert "k" * 16 not in "".join(texts)  # nor the key


def test_cli_without_a_key_fails_with_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UMBIF_PSEUDONYM_KEY", raising=False)
    write_series(tmp_path / "archive")
    result = CliRunner().invoke(app, ["ingest", "dicom", str(tmp_path / "archive"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("error: pseudonymisation needs a secret key") and "--key-file" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    key = tmp_path / "key"
    key.write_text("k" * 32)
    result = CliRunner().invoke(
        app, ["ingest", "dicom", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--key-file", str(key)]
    )
    assert result.exit_code == 1
    assert "error: no DICOM image under" in result.output and "a.txt: not a DICOM file" in result.output


def test_rules_example_in_the_docs_loads(tmp_path: Path) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "dicom.md"
    example = docs.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "rules.yaml").write_text(example)
    rules = SeriesRules.from_yaml(tmp_path / "rules.yaml")
    assert classify(Acquisition("3D_GRE_SAG", tr=8, te=3), rules).sequence == "t1"
    assert rules.t2.te_ms == (60.0, None) and rules.t2.tr_ms == SeriesRules().t2.tr_ms


def test_pydicom_dicomdir_tree(tmp_path: Path) -> None:
    """pydicom's real DICOMDIR test tree (MR localizers and MIPs, CT, CR, DICOMDIR index files):
    nothing in it is a brain volume, and each series and file says why; no identifier is written."""
    root = Path(get_testdata_file("MR_small.dcm", download=False)).parent / "dicomdirtests"
    with pytest.raises(ValueError, match="no series was converted"):
        ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY))
    series = pd.read_csv(tmp_path / "out" / "series.csv", dtype=str, keep_default_na=False)
    reasons = {(folder.split("/")[-1], reason.split(" (")[0]) for folder, reason in series[["folder", "reason"]].values}
    assert {("MR1", "localizer"), ("MR2", "localizer"), ("MR700", "derived image")} <= reasons
    assert set(series["reason"]) >= {"modality CT, not MR", "modality CR, not MR"}
    assert set(series["decision"]) == {"skipped"} and len(series) == 13
    identifiers, paths = [], []
    for path in root.rglob("*"):
        paths.append(path.relative_to(root).as_posix())
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, IsADirectoryError):
            continue
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate",
                        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):  # fmt: skip
            identifiers.append(str(ds.get(keyword, "")))
    assert leaks(paths, identifiers)  # a PACS export named after PatientIDs ...
    assert len(set(identifiers)) > 40
    assert leaks([(tmp_path / "out" / "series.csv").read_text()], identifiers) == []  # ... named apart from them
