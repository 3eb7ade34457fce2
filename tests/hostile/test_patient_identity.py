"""Patient identity (issue 14, class 8): ids normalised before grouping, a patient at two sites and ids
that differ only in case warned about, a mask outside the images or of probabilities reported."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import AFFINES, brain_phantom, save_nifti
from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data.io import ImageError
from umbif.data.manifest import Manifest, errors, validate
from umbif.data.preprocess import preprocess_exam
from umbif.data.samples import labelled_samples

CONFIG = PreprocessConfig(shape=(24, 24, 24))
MULLER_NFC = unicodedata.normalize("NFC", "Müller")
MULLER_NFD = unicodedata.normalize("NFD", "Müller")


def _row(exam: str, patient: str, **cells: str) -> dict[str, str]:
    return {"exam_id": exam, "patient_id": patient, "site": "A", "t1": f"{exam}/t1.nii.gz", "idh": "mutant"} | cells


def _read_back(tmp_path: Path, rows: list[dict[str, str]]) -> Manifest:
    """The rows as a CSV written by another tool (pandas), read the way every command reads it."""
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return Manifest.read(tmp_path / "manifest.csv")


@pytest.mark.parametrize(
    ("first", "second"),
    [("P1", " P1"), ("P1", "P1 "), ("P1", "\tP1\u00a0"), (MULLER_NFC, MULLER_NFD), (f" {MULLER_NFD}", MULLER_NFC)],
    ids=["leading space", "trailing space", "tab and no-break space", "NFC vs NFD", "space and NFD"],
)
def test_patient_ids_are_normalised_before_grouping(tmp_path: Path, first: str, second: str) -> None:
    """Promise: patient ids are stripped and NFC-normalised, so one patient cannot land in train and test by
    spelling: the two exams are one patient with one genotype sample."""
    manifest = _read_back(tmp_path, [_row("e1", first, timepoint="0"), _row("e2", second, timepoint="1")])

    assert manifest.table["patient_id"].nunique() == 1
    assert manifest.table.at[0, "patient_id"] == unicodedata.normalize("NFC", first).strip()
    samples = labelled_samples(manifest.table, "idh").table
    assert len(samples) == 1 and samples.at[0, "exam_id"] == "e1"


def test_exam_ids_that_differ_only_in_spelling_are_one_id(tmp_path: Path) -> None:
    """Promise: the same normalisation makes two spellings of one exam id a duplicate (one cache entry)."""
    manifest = _read_back(tmp_path, [_row(MULLER_NFC, "p1"), _row(f"{MULLER_NFD} ", "p2")])

    assert [(p.row, p.column) for p in errors(validate(manifest, check_files=False))] == [(2, "exam_id")]


def test_a_patient_at_two_sites_is_a_warning(tmp_path: Path) -> None:
    """Promise: a warning (not an error) when one patient appears at two sites."""
    rows = [_row("e1", "P1", site="A"), _row("e2", "P1", site="B", timepoint="1"), _row("e3", "P2", site="B")]
    problems = validate(_read_back(tmp_path, rows), check_files=False)

    assert errors(problems) == []
    (warning,) = [p for p in problems if p.column == "site"]
    assert warning.row == 2 and "patient 'P1' is at site 'B' here and at 'A' in row 1" in warning.message


def test_patient_ids_that_differ_only_in_case_are_a_warning(tmp_path: Path) -> None:
    """Promise (identity): ids spelt in two cases ('P1', 'p1') are flagged, since grouping keeps them apart."""
    problems = validate(_read_back(tmp_path, [_row("e1", "P1"), _row("e2", "p1", timepoint="1")]), check_files=False)

    assert errors(problems) == []
    (warning,) = [p for p in problems if p.column == "patient_id"]
    assert warning.row == 2 and "differs only in case from 'P1' in row 1" in warning.message


@pytest.fixture
def exam_with(make_exam: Callable[..., Path], tmp_path: Path) -> Callable[[str, np.ndarray, np.ndarray], Manifest]:
    """Factory: one exam with a brain mask or segmentation of the given data and affine."""

    def _make(kind: str, data: np.ndarray, affine: np.ndarray) -> Manifest:
        folder = make_exam("e1", shape=(24, 24, 24))
        save_nifti(folder / f"{kind}.nii.gz", data, affine)
        row = {"exam_id": "e1", "patient_id": "p1", "site": "A", kind: f"data/e1/{kind}.nii.gz"}
        return Manifest(pd.DataFrame([row | {s: f"data/e1/e1_{s}.nii.gz" for s in SEQUENCES}]), tmp_path)

    return _make


def _shifted(mm: float) -> np.ndarray:
    affine = AFFINES["ras"].copy()
    affine[0, 3] += mm
    return affine


@pytest.mark.parametrize("kind", ["seg", "brain_mask"])
@pytest.mark.parametrize("shift_mm", [500.0, 36.0])
def test_a_mask_outside_the_field_of_view_is_reported(exam_with: Callable, kind: str, shift_mm: float) -> None:
    """Promise: a segmentation (or brain mask) outside the image's field of view is reported, not cropped to
    nothing (a seg 50 cm away was cached as an empty segmentation)."""
    labels = (brain_phantom((24, 24, 24)) > 0).astype(np.uint8)
    manifest = exam_with(kind, labels, _shifted(shift_mm))

    with pytest.raises(ImageError, match=rf"{kind}.nii.gz: \d+% of the .* labelled voxels lie outside the images'"):
        preprocess_exam(manifest.exam(0), CONFIG)


@pytest.mark.parametrize("kind", ["seg", "brain_mask"])
def test_a_probability_valued_mask_is_reported(exam_with: Callable, kind: str) -> None:
    """Promise: a mask of probabilities (0.3 ...) is reported as such; a brain mask of probabilities was
    taken as "> 0" (the whole head) and a probability seg was called "not integer labels"."""
    probabilities = (brain_phantom((24, 24, 24)) > 0) * np.float32(0.3)
    manifest = exam_with(kind, probabilities.astype(np.float32), AFFINES["ras"])

    with pytest.raises(ImageError, match=rf"{kind}.nii.gz: the .* holds probabilities .* such as 0.3\), not labels"):
        preprocess_exam(manifest.exam(0), CONFIG)
