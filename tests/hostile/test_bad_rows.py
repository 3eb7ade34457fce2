"""One bad row never kills a run (issue 14, class 5): a symbolic link loop, an over-long id, a cache file
that cannot be written, a duplicated or empty exam_id, a full disk."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from umbif import SEQUENCES
from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.data.cache import Cache, read_index, run_preprocess, verify_entry
from umbif.data.manifest import Manifest, errors, validate

CONFIG = PreprocessConfig(shape=(24, 24, 24))
NAMES = ("e1", "e2", "e3")
ENV = {"COLUMNS": "250"}


def _row(name: str, **cells: str) -> dict[str, str]:
    return (
        {"exam_id": name, "patient_id": f"p-{name}", "site": "s"}
        | {s: f"data/{name}/{name}_{s}.nii.gz" for s in SEQUENCES}
        | cells
    )


@pytest.fixture
def exams(make_exam: Callable[..., Path], tmp_path: Path) -> Path:
    """Three small exams under ``tmp_path/data``; returns ``tmp_path`` (the manifests' root)."""
    for seed, name in enumerate(NAMES):
        make_exam(name, shape=(24, 24, 24), seed=seed)
    return tmp_path


def _manifest(root: Path, rows: list[dict[str, str]]) -> Manifest:
    manifest = Manifest(pd.DataFrame(rows), root=root)
    manifest.write(root / "manifest.csv")
    return manifest


def _invoke(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result, " ".join((result.stdout + result.stderr).split())


def test_symlink_loop_is_a_validation_problem(exams: Path) -> None:
    """Promise: an error from resolving a path (a symbolic link loop) is a validation problem of its row."""
    os.symlink("loop_b.nii.gz", exams / "data" / "loop_a.nii.gz")
    os.symlink("loop_a.nii.gz", exams / "data" / "loop_b.nii.gz")
    manifest = _manifest(exams, [_row("e1"), _row("e2", t2="data/loop_a.nii.gz"), _row("e3")])

    (problem,) = errors(validate(manifest))
    report = run_preprocess(manifest, exams / "cache", CONFIG)
    result, text = _invoke("manifest", "validate", exams / "manifest.csv")

    assert (problem.row, problem.column) == (2, "t2") and "symbolic link loop" in problem.message
    assert report.done == 2 and [f.exam_id for f in report.failures] == ["e2"]
    assert "symbolic link loop" in report.failures[0].reason
    assert result.exit_code == 1 and "row 2, t2" in text and "symbolic link loop" in text


def test_over_long_exam_ids_are_cached_under_short_file_names(exams: Path) -> None:
    """Promise: over-long ids are shortened with a hash for file names (a 300-character id was ENAMETOOLONG).

    (Holds on HEAD through ``utils.safe_name``; fails on f092fa0, before that commit.)"""
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    manifest = _manifest(exams, [_row("e1", exam_id=long_a), _row("e2", exam_id=long_b), _row("e3", t1="none")])
    manifest.table.at[2, "exam_id"] = "c" * 300  # a quarantined long id too

    report = run_preprocess(manifest, exams / "cache", CONFIG)

    assert report.done == 2 and [f.exam_id for f in report.failures] == ["c" * 300]
    cache = Cache(exams / "cache")
    assert set(cache.exam_ids) == {long_a, long_b}
    assert cache.load(long_a, "image").shape == (4, 24, 24, 24)
    assert max(len(p.name) for p in (exams / "cache" / "exams").iterdir()) <= 120


@pytest.mark.parametrize("blocked", ["e2.image.npy", "e2.masks.npy", "e2.json"])
def test_a_cache_file_that_cannot_be_written_quarantines_its_exam(exams: Path, blocked: str) -> None:
    """Promise: every write of an exam sits inside its quarantine guard (a folder in the way killed the run)."""
    (exams / "cache" / "exams" / blocked).mkdir(parents=True)
    manifest = _manifest(exams, [_row(n) for n in NAMES])

    report = run_preprocess(manifest, exams / "cache", CONFIG)

    assert report.done == 2 and [f.exam_id for f in report.failures] == ["e2"]
    assert "Is a directory" in report.failures[0].reason
    assert set(read_index(exams / "cache")["exams"][i]["exam_id"] for i in range(2)) == {"e1", "e3"}


def test_a_quarantine_record_that_cannot_be_written_does_not_stop_the_run(exams: Path) -> None:
    """Promise: the quarantine record is inside the guard too: the failure is still reported, the run goes on."""
    (exams / "cache" / "exams" / "e2.failed.json").mkdir(parents=True)
    manifest = _manifest(exams, [_row(n) for n in NAMES])
    manifest.table.at[1, "t1"] = "data/none.nii.gz"

    report = run_preprocess(manifest, exams / "cache", CONFIG)

    assert report.done == 2 and [f.exam_id for f in report.failures] == ["e2"]
    assert set(Cache(exams / "cache").exam_ids) == {"e1", "e3"}


def test_a_duplicated_exam_id_quarantines_all_its_rows(exams: Path) -> None:
    """Promise: a duplicated exam_id quarantines all its rows and the run exits non-zero (the second row
    vanished silently and the first was cached)."""
    assert run_preprocess(_manifest(exams, [_row(n) for n in NAMES]), exams / "cache", CONFIG).ok
    manifest = _manifest(exams, [_row("e1"), _row("e2"), _row("e3", exam_id="e1")])

    problems = errors(validate(manifest))
    report = run_preprocess(manifest, exams / "cache", CONFIG)
    result, text = _invoke("preprocess", exams / "manifest.csv", "--out", exams / "cache", "--shape", "24x24x24")

    assert [(p.row, p.column, p.message) for p in problems] == [
        (3, "exam_id", "duplicate exam_id 'e1' (first in row 1)")
    ]
    assert [f.exam_id for f in report.failures] == ["e1"] and "(first in row 1)" in report.failures[0].reason
    assert "e1" not in Cache(exams / "cache").exam_ids  # the earlier entry of e1 is gone too
    assert result.exit_code == 1 and "quarantined e1" in text


def test_a_row_without_exam_id_fails_the_run(exams: Path) -> None:
    """Promise: a row with an empty exam_id is reported and the run exits non-zero (it was skipped silently)."""
    manifest = _manifest(exams, [_row("e1"), _row("e2", exam_id="")])

    report = run_preprocess(manifest, exams / "cache", CONFIG)
    result, text = _invoke("preprocess", exams / "manifest.csv", "--out", exams / "cache", "--shape", "24x24x24")

    assert report.done == 1 and not report.ok
    assert "manifest row 2: exam_id is empty" in report.failures[0].reason
    assert result.exit_code == 1 and "manifest row 2: exam_id is empty" in text


def test_a_full_disk_is_one_clear_error_and_keeps_finished_work(exams: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Promise: a full disk gives one clear error naming the folder (no traceback), finished work kept."""
    _manifest(exams, [_row(n) for n in NAMES])
    replace = os.replace

    def full_after_e1(source: str, target: str) -> None:
        if not Path(target).name.startswith(("e1.", "plan.json")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_after_e1)
        result, text = _invoke("preprocess", exams / "manifest.csv", "--out", exams / "cache", "--shape", "24x24x24")

    assert result.exit_code == 1
    assert f"no space left to write in {exams / 'cache' / 'exams'}" in text
    assert text.count("no space left") == 1 and "quarantined" not in text
    assert not [p for p in (exams / "cache" / "exams").iterdir() if p.name.endswith(".tmp")]
    report = run_preprocess(Manifest.read(exams / "manifest.csv"), exams / "cache", CONFIG)  # space freed: rerun
    assert report.ok and (report.done, report.skipped) == (2, 1)  # e1 was finished and kept
    for entry in read_index(exams / "cache")["exams"]:
        verify_entry(exams / "cache", entry)
