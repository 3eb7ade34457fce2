"""DICOM round trip on the real UPENN-GBM exam: its T1c and FLAIR written as DICOM series (LPS slices, as
a scanner exports them, in shuffled file order), ingested with `umbif ingest dicom`, and compared with the
original NIfTI voxel for voxel and in world coordinates."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from dicom_factory import write_series

from umbif.data.dicom import ingest_dicom
from umbif.data.pseudonym import Pseudonymiser

SERIES = {
    "t1c": {"file": "00001_t1c.nii.gz", "description": "AX T1 MPRAGE POST GD", "contrast_agent": "Gadavist"},
    "flair": {"file": "00001_t2f.nii.gz", "description": "AX T2 FLAIR", "tr": 9000.0, "te": 120.0, "ti": 2500.0},
}


def _as_series(image: nib.Nifti1Image) -> dict:
    """The write_series geometry of a NIfTI image: LPS orientation, origin, spacings, slice step."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    assert np.dot(np.cross(row_dir, col_dir), lps[:3, 2]) > 0  # slices run along the normal
    return {
        "orientation": (*row_dir, *col_dir),
        "origin": tuple(lps[:3, 3]),
        "pixel_spacing": (float(spacing[1]), float(spacing[0])),
        "slice_step": float(spacing[2]),
    }


def test_real_exam_survives_a_dicom_round_trip(upenn_sample: Path, tmp_path: Path) -> None:
    originals = {}
    for number, (sequence, spec) in enumerate(SERIES.items(), start=1):
        image = nib.load(upenn_sample / spec["file"])
        originals[sequence] = image
        data = np.asarray(image.dataobj)
        slices = data.shape[2]
        order = list(np.random.default_rng(number).permutation(slices) + 1)  # file names out of position order
        extra = {k: v for k, v in spec.items() if k != "file"}
        write_series(
            tmp_path / "pacs" / sequence, series=number, stored=data, order=order, **_as_series(image), **extra
        )
    report = ingest_dicom(tmp_path / "pacs", tmp_path / "out", Pseudonymiser(b"k" * 32), site="upenn")
    table = report.manifest.table
    assert len(table) == 1, report.problems
    for sequence, original in originals.items():
        path = table.iloc[0][sequence]
        assert path, (sequence, report.problems)
        converted = nib.load(tmp_path / "out" / path)
        np.testing.assert_allclose(converted.affine, original.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(converted.dataobj), np.asarray(original.dataobj))
    series = pd.read_csv(tmp_path / "out" / "series.csv", dtype=str, keep_default_na=False)
    assert sorted(series["decision"]) == ["flair", "t1c"], series[["decision", "reason"]]
