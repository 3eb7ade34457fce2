"""Messages (issue 14, class 9): a missing required column is said once; a folder or FIFO given as an image
says so; a malformed or missing config or manifest names the file and the problem, never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from umbif import SEQUENCES
from umbif.cli import app
from umbif.config import AliasConfig, PreprocessConfig
from umbif.data.io import ImageError, read_nifti
from umbif.data.manifest import Manifest, errors, validate
from umbif.data.sequences import alias_table
from umbif.data.sources.common import find_exam_folders

ENV = {"COLUMNS": "250"}


def _invoke(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result, " ".join((result.stdout + result.stderr).split())


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail instead of hanging for ever (opening a FIFO blocks until someone writes to it)."""

    def expire(*_: object) -> None:
        raise TimeoutError("blocked: the FIFO was opened")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------------- columns
@pytest.mark.parametrize("column", ["exam_id", "patient_id"])
def test_a_missing_required_column_is_said_once(tmp_path: Path, column: str) -> None:
    """Promise: a missing required column is one problem, not one per row."""
    rows = [{"exam_id": f"e{i}", "patient_id": f"p{i}", "site": "A", "t1": "x.nii.gz"} for i in range(6)]
    pd.DataFrame(rows).drop(columns=column).to_csv(tmp_path / "manifest.csv", index=False)

    problems = [p for p in validate(Manifest.read(tmp_path / "manifest.csv"), check_files=False) if p.column == column]
    result, text = _invoke("manifest", "validate", tmp_path / "manifest.csv", "--no-files")

    assert [(p.row, p.message) for p in problems] == [
        (None, f"required column {column!r} is missing; add it (one value per exam)")
    ]
    assert result.exit_code == 1 and text.count("is missing") == 1 and "1 errors" in text


def test_preprocess_without_an_exam_id_column_is_one_error(tmp_path: Path) -> None:
    """Promise: preprocess says the column is missing once, naming the manifest (it quarantined every row)."""
    pd.DataFrame([{"patient_id": f"p{i}", "t1": "x.nii.gz"} for i in range(4)]).to_csv(tmp_path / "m.csv", index=False)

    result, text = _invoke("preprocess", tmp_path / "m.csv", "--out", tmp_path / "cache")

    assert result.exit_code == 1 and "quarantined" not in text
    assert text.endswith(
        f"error: {tmp_path / 'm.csv'}: required column 'exam_id' is missing; add it (one value per exam)"
    )


# ----------------------------------------------------------------------------------------- not a file
def _folder(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    ("make", "said"),
    [(_folder, "is a folder, not an image file"), (_fifo, "is not a regular file (a FIFO")],
    ids=["folder", "fifo"],
)
def test_a_folder_or_fifo_given_as_an_image_says_so(
    tmp_path: Path, deadline: None, make: Callable[[Path], None], said: str
) -> None:
    """Promise: a folder or FIFO given as an image says so (it was "file not found", and a FIFO hung read_nifti)."""
    make(tmp_path / "t1.nii.gz")
    rows = [{"exam_id": "e1", "patient_id": "p1", "site": "A", "t1": "t1.nii.gz"}]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)

    (problem,) = errors(validate(Manifest.read(tmp_path / "manifest.csv")))
    result, text = _invoke("manifest", "validate", tmp_path / "manifest.csv")

    assert (problem.row, problem.column) == (1, "t1") and said in problem.message
    assert result.exit_code == 1 and said in text
    with pytest.raises(ImageError, match=rf"^{tmp_path / 't1.nii.gz'}: {said.split(' (')[0]}"):
        read_nifti(tmp_path / "t1.nii.gz")


def test_ingest_reports_a_nifti_name_that_is_not_a_file(make_exam: Callable[..., Path], tmp_path: Path) -> None:
    """Promise: ingest names a FIFO or a link loop called like an image and skips it (a loop was a traceback)."""
    root = tmp_path / "data"
    make_exam("e1", shape=(8, 8, 8))
    make_exam("e2", sequences=("t1",), shape=(8, 8, 8))
    os.mkfifo(root / "e2" / "e2_t2.nii.gz")
    os.symlink("e2_flair.nii.gz", root / "e2" / "e2_flair.nii.gz")  # a link to itself

    exams, problems = find_exam_folders(root, alias_table())
    result, text = _invoke("ingest", "folder", root)

    assert [exam.files.keys() for exam in exams][1] == {"t1"}
    assert sorted(problems) == [
        "e2: e2_flair.nii.gz is not a regular file (a FIFO, a broken link or a link loop); skipped",
        "e2: e2_t2.nii.gz is not a regular file (a FIFO, a broken link or a link loop); skipped",
    ]
    assert result.exit_code == 0 and "e2_t2.nii.gz is not a regular file" in text
    assert "validation errors" not in text


# ----------------------------------------------------------------------------------------- config files
CONFIGS = {
    "syntax error": ("spacing: [2, 2\n", r"not valid YAML at line 2, column 1"),
    "not UTF-8": (b"\xff\xfe\x00garbage", r"not a text file \(byte 0 is not UTF-8\)"),
    "a folder": (None, r"is a folder, not a YAML file"),
}


def _config(tmp_path: Path, content: str | bytes | None) -> Path:
    path = tmp_path / "config.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(("content", "said"), CONFIGS.values(), ids=CONFIGS.keys())
def test_a_malformed_config_names_the_file(tmp_path: Path, content: str | bytes | None, said: str) -> None:
    """Promise: a malformed config names the file and the problem (a YAML syntax error was a traceback)."""
    path = _config(tmp_path, content)
    pd.DataFrame([{"exam_id": "e1", "patient_id": "p1", "t1": "x"}]).to_csv(tmp_path / "m.csv", index=False)

    with pytest.raises((ValueError, FileNotFoundError), match=rf"{path}.*{said}"):
        PreprocessConfig.from_options(path)
    with pytest.raises((ValueError, FileNotFoundError), match=rf"{path}.*{said}"):
        AliasConfig.from_yaml(path)
    for args in (
        ["preprocess", tmp_path / "m.csv", "--out", tmp_path / "cache", "--config", path],
        ["synth", "--out", tmp_path / "synth", "--config", path],
        ["ingest", "folder", tmp_path, "--aliases", path],
    ):
        result, text = _invoke(*args)
        assert result.exit_code == 1 and str(path) in text, text


def test_a_config_with_a_wrong_value_names_the_file_and_the_key(tmp_path: Path) -> None:
    """Promise: a config value of the wrong type names the file and the key, not pydantic's error dump."""
    path = _config(tmp_path, "aliases: 5\n")

    result, text = _invoke("ingest", "folder", tmp_path, "--aliases", path)

    assert result.exit_code == 1
    assert text == f"error: AliasConfig (from {path}): aliases: Input should be a valid dictionary"


# ----------------------------------------------------------------------------------------- manifests
MANIFESTS = {
    "random bytes": (bytes(range(256)) * 8, "not (UTF-8 text|a readable CSV manifest)"),
    "Latin-1": ("exam_id,patient_id\ne1,Müller\n".encode("latin-1"), r"not UTF-8 text \(line 2, byte 23\)"),
    "empty": (b"", "the file is empty"),
    "open quote": (b'exam_id,patient_id\n"e1,p1\n', "not a readable CSV manifest .*EOF inside string"),
    "ragged": (b"exam_id,patient_id\ne1,p1,x,y\n", "not a readable CSV manifest .*Expected 2 fields"),
    "column twice": (b"exam_id,patient_id,exam_id\ne1,p1,e2\n", "column 'exam_id' appears more than once"),
    "a folder": (None, "is a folder, not a manifest"),
}


@pytest.mark.parametrize(("content", "said"), MANIFESTS.values(), ids=MANIFESTS.keys())
def test_a_malformed_manifest_names_the_file(tmp_path: Path, content: bytes | None, said: str) -> None:
    """Promise: a malformed manifest names the file and the problem ("No columns to parse from file" did not)."""
    path = tmp_path / "manifest.csv"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)

    with pytest.raises(ValueError, match=rf"^{path}:? .*{said}"):
        Manifest.read(path)
    for args in (["manifest", "validate", path], ["manifest", "summary", path], ["preprocess", path, "--out", path]):
        result, text = _invoke(*args)
        assert result.exit_code == 1 and text.startswith(f"error: {path}") and re.search(said, text), text


def test_a_manifest_with_a_byte_order_mark_and_spaced_header_reads(tmp_path: Path) -> None:
    """A manifest saved by a spreadsheet (BOM, spaces around header names) reads as written."""
    (tmp_path / "manifest.csv").write_bytes("\ufeffexam_id , patient_id,site\ne1,p1,A\n".encode())
    manifest = Manifest.read(tmp_path / "manifest.csv")
    assert manifest.missing == () and manifest.table.at[0, "exam_id"] == "e1"


def test_synth_into_a_file_is_one_error(tmp_path: Path) -> None:
    """Promise: an output folder that is a file is one error naming it (it was a FileExistsError traceback)."""
    (tmp_path / "taken").write_text("x")

    result, text = _invoke("synth", "--out", tmp_path / "taken", "--exams", "4")

    assert result.exit_code == 1 and text.endswith(f"error: {tmp_path / 'taken'}: File exists")


def test_preprocess_into_a_file_is_one_error(make_exam: Callable[..., Path], tmp_path: Path) -> None:
    """Promise: a cache folder that is a file is one error naming it (it was a FileExistsError traceback)."""
    make_exam("e1", shape=(8, 8, 8))
    row = {"exam_id": "e1", "patient_id": "p1", "site": "A"} | {s: f"data/e1/e1_{s}.nii.gz" for s in SEQUENCES}
    pd.DataFrame([row]).to_csv(tmp_path / "manifest.csv", index=False)
    shutil.copy(tmp_path / "manifest.csv", tmp_path / "taken")

    result, text = _invoke("preprocess", tmp_path / "manifest.csv", "--out", tmp_path / "taken")

    assert result.exit_code == 1 and f"error: {tmp_path / 'taken' / 'exams'}: Not a directory" in text
