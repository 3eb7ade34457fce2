"""CSV cells cannot carry formulas (issue 14, class 6; the manifest and quarantine part): every text cell a
spreadsheet would run (``= + - @``, tab, CR first) is written with a leading ``'`` and read back as it was."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.data.cache import run_preprocess
from umbif.data.manifest import Manifest
from umbif.data.sources.folder import ingest_folder

FORMULAS = ["=cmd|' /C calc'!A0", "+1+cmd", "-2+3", "@SUM(A1)", "\t=1", "\r=1", '=HYPERLINK("http://x", "y")']
ESCAPED_START = ("=", "+", "-", "@", "\t", "\r")


def _cells(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("column", ["exam_id", "patient_id", "site", "idh", "t1", "notes"])
@pytest.mark.parametrize("formula", FORMULAS)
def test_manifest_csv_neutralises_formulas_and_round_trips(tmp_path: Path, column: str, formula: str) -> None:
    """Promise: the manifest CSV neutralises cells starting with = + - @ tab CR, and reads back unchanged."""
    row = {"exam_id": "e1", "patient_id": "p1", "site": "A", "timepoint": "-1", "t1": "e1/t1.nii.gz", "notes": ""}
    manifest = Manifest(pd.DataFrame([row | {column: formula}]), tmp_path)

    manifest.write(tmp_path / "manifest.csv")
    header, written = _cells(tmp_path / "manifest.csv")
    back = Manifest.read(tmp_path / "manifest.csv")

    cell = written[header.index(column)]
    assert cell == "'" + (formula.strip() if column in ("exam_id", "patient_id", "site") else formula)
    assert not any(value.startswith(ESCAPED_START) for value in written if value != "-1")
    assert written[header.index("timepoint")] == "-1"  # a number is not a formula
    pd.testing.assert_frame_equal(back.table, manifest.table)


def test_quarantine_csv_neutralises_formulas(make_exam: Callable[..., Path], tmp_path: Path) -> None:
    """Promise: quarantine.csv neutralises formula cells (exam ids and reasons come from the user's files)."""
    rows = [
        {"exam_id": '=HYPERLINK("http://evil", "ok")', "patient_id": "p1", "site": "A", "t1": "missing.nii.gz"},
        {"exam_id": "@cmd", "patient_id": "p2", "site": "A", "t1": "-missing.nii.gz"},
    ]
    report = run_preprocess(Manifest(pd.DataFrame(rows), tmp_path), tmp_path / "cache", PreprocessConfig())

    cells = [cell for row in _cells(tmp_path / "cache" / "quarantine.csv")[1:] for cell in row]
    assert len(report.failures) == 2 and len(cells) == 6
    assert not any(cell.startswith(ESCAPED_START) for cell in cells)
    assert {cells[0], cells[3]} == {"'@cmd", """'=HYPERLINK("http://evil", "ok")"""}


def test_ingest_writes_a_formula_proof_manifest(make_exam: Callable[..., Path], tmp_path: Path) -> None:
    """Promise: a folder named like a formula becomes an escaped cell of the ingested manifest, read back as is."""
    folder = make_exam("e1", sequences=("t1",), shape=(8, 8, 8))
    shutil.move(folder, folder.parent / "=cmd")

    result = CliRunner().invoke(app, ["ingest", "folder", str(tmp_path / "data")])

    assert result.exit_code == 0, result.output
    header, written = _cells(tmp_path / "data" / "manifest.csv")
    assert written[header.index("exam_id")] == "'=cmd" and written[header.index("t1")] == "'=cmd/e1_t1.nii.gz"
    assert Manifest.read(tmp_path / "data" / "manifest.csv").table.at[0, "exam_id"] == "=cmd"
    assert ingest_folder(tmp_path / "data").manifest.table.at[0, "exam_id"] == "=cmd"


def test_a_formula_in_a_column_name_is_neutralised_and_read_back(tmp_path: Path) -> None:
    """Promise: header cells are cells too: a free column named like a formula is escaped and read back."""
    manifest = Manifest(pd.DataFrame([{"exam_id": "e1", "patient_id": "p1", "=cmd|' /C calc'!A0": "x"}]), tmp_path)

    manifest.write(tmp_path / "manifest.csv")

    assert "'=cmd|' /C calc'!A0" in _cells(tmp_path / "manifest.csv")[0]
    assert "=cmd|' /C calc'!A0" in Manifest.read(tmp_path / "manifest.csv").table.columns
