"""The DICOM ingest at archive scale: the header table (``umbif.data.dicom_scan``) scanned in shards and worker
processes, resumed after a kill, and the conversion sharded by patient, resumed, and merged. Shards are simulated
by running each ``--shard i/n`` in turn on this machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dicom_factory import JANE, JOHN, Patient, write_series
from typer.testing import CliRunner

from umbif.cli import app
from umbif.data import dicom_scan
from umbif.data.cache import Shard
from umbif.data.dicom import SeriesRules, ingest_dicom, merge_dicom
from umbif.data.dicom_scan import SCAN_DIR, scan_dicom
from umbif.data.pseudonym import Pseudonymiser

KEY = b"k" * 32
PATIENTS = [Patient(f"Test^Patient{i}", f"PID-{i:04d}", "19700101", f"ACC{i:06d}", "Test Clinic") for i in range(4)]


def archive(root: Path) -> Path:
    """Six patients (one without PatientID), follow-ups, a copy, a refused series, duplicates, files that are not
    DICOM: every path of stage 2 in a few seconds."""
    write_series(root / "jane" / "base" / "t1", patient=JANE, study="base", study_date="20190514", series=1)
    write_series(root / "jane" / "base" / "t2", patient=JANE, study="base", study_date="20190514", series=2,
                 description="AX T2 FSE", tr=4000, te=100)  # fmt: skip
    write_series(root / "jane" / "fu" / "t1", patient=JANE, study="fu", study_date="20190618", series=1,
                 description="AX T1 POST GD", contrast_agent="Gd", slope=2.5, intercept=-7.0)  # fmt: skip
    write_series(root / "jane" / "fu" / "flair", patient=JANE, study="fu", study_date="20190618", series=3,
                 description="AX FLAIR", tr=9000, te=120, ti=2500, skip=[4])  # fmt: skip
    write_series(root / "john" / "a", patient=JOHN, study="only", series=5, description="T2", tr=4000, te=100)
    copy = write_series(root / "john" / "b", patient=JOHN, study="only", series=6, description="T2", tr=4000, te=100)
    (root / "john" / "copies").mkdir()
    shutil.copy(copy.files[3], root / "john" / "copies" / "again.dcm")
    for i, patient in enumerate(PATIENTS):
        write_series(root / f"p{i}", patient=patient, study=f"s{i}", series=1, description="SAG T1 MPRAGE",
                     tr=2300, te=3, ti=900, seed=i)  # fmt: skip
    write_series(root / "anonymous", patient=Patient("", "", "", "", ""), study="anon", series=1)
    (root / "notes.txt").write_text("not DICOM")
    (root / "p0" / "broken.dcm").write_bytes(copy.files[0].read_bytes()[:200])
    return root


def files_under(folder: Path) -> dict[str, bytes]:
    """The outputs a user reads (hidden folders left out), by path under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def test_sharded_ingest_gives_what_one_process_gives(tmp_path: Path) -> None:
    """Scan with 2 workers in 2 shards, convert in 3 shards, merge: the same manifest.csv, series.csv, NIfTI bytes
    (gzip with mtime 0, so equal data gives equal bytes), pseudonyms and problem lines as one process."""
    root, one, sharded = archive(tmp_path / "archive"), tmp_path / "one", tmp_path / "sharded"
    reference = ingest_dicom(root, one, Pseudonymiser(KEY), site="a")
    reference.write(one / "manifest.csv")

    scans = [scan_dicom(root, sharded, Pseudonymiser(KEY), workers=2, shard=Shard(i, 2)) for i in range(2)]
    table = pq.read_table(sharded / SCAN_DIR).to_pandas()
    assert sum(s.files for s in scans) == len(table) == table["file"].nunique() == 90  # split, none twice
    assert all(s.files > 10 for s in scans)
    problems, exams = [], []
    for i in range(3):
        part = ingest_dicom(root, sharded, Pseudonymiser(KEY), site="a", workers=2 if i == 1 else 1, shard=Shard(i, 3))
        problems += part.problems
        exams.append(len(part.manifest))
    assert not (sharded / "manifest.csv").exists() and not (sharded / "series.csv").exists()
    merged = merge_dicom(sharded)
    merged.write(sharded / "manifest.csv")

    assert sorted(exams, reverse=True)[1] > 0  # the patients were spread over the shards
    assert files_under(sharded) == files_under(one)
    assert len([name for name in files_under(one) if name.endswith(".nii.gz")]) == 9
    assert sorted(problems) == sorted(reference.problems) and merged.problems == []
    said = "\n".join(problems)
    assert all(f in said for f in ("is a copy", "no PatientID", "a missing slice?", "notes.txt: not a DICOM file"))
    assert merged.manifest.table.equals(reference.manifest.table)
    jane = Pseudonymiser(KEY).patient(JANE.patient_id)
    assert merged.manifest.table.loc[merged.manifest.table["patient_id"] == jane, "timepoint"].tolist() == ["0", "35"]


def test_the_commands_of_a_sharded_ingest(tmp_path: Path) -> None:
    """`dicom --scan-only --shard i/n`, `dicom --shard i/n` and `dicom --merge` write what `dicom` writes alone."""
    root, key = archive(tmp_path / "archive"), tmp_path / "key"
    key.write_text("k" * 32)
    options = ["--key-file", str(key), "--site", "a"]

    def ingest(out: str, *more: str) -> str:
        result = CliRunner().invoke(app, ["ingest", "dicom", str(root), "--out", str(tmp_path / out), *options, *more])
        assert result.exit_code == 0, result.output
        return result.output

    assert "wrote" in ingest("one")
    for i in range(2):
        assert f"scanned part {i}/2 of ROOT" in ingest("sharded", "--scan-only", "--shard", f"{i}/2")
    for i in range(3):
        assert f"wrote part {i}/3" in ingest("sharded", "--shard", f"{i}/3")
    assert not (tmp_path / "sharded" / "manifest.csv").exists()
    assert "manifest.csv: 8 exams" in ingest("sharded", "--merge")
    assert files_under(tmp_path / "sharded") == files_under(tmp_path / "one")


def test_a_killed_scan_resumes_and_a_rerun_reads_only_new_or_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, out = tmp_path / "archive", tmp_path / "out"
    written = write_series(root / "a", series=1, shape=(16, 12, 10))
    write_series(root / "b", series=2, description="AX T2 FSE", tr=4000, te=100, shape=(16, 12, 10))
    monkeypatch.setattr(dicom_scan, "BATCH_FILES", 4)
    monkeypatch.setattr(dicom_scan, "CHUNK_FILES", 4)  # a chunk per batch
    scan_batch, calls = dicom_scan._scan_batch, []

    def killed_at_the_third_batch(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return scan_batch(*args)

    monkeypatch.setattr(dicom_scan, "_scan_batch", killed_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        scan_dicom(root, out, Pseudonymiser(KEY))
    assert len(list((out / SCAN_DIR).glob("part-0-of-1-*.parquet"))) == 2  # what was read is kept
    monkeypatch.setattr(dicom_scan, "_scan_batch", scan_batch)
    resumed = scan_dicom(root, out, Pseudonymiser(KEY))
    assert (resumed.files, resumed.skipped, resumed.scanned) == (20, 8, 12)
    assert scan_dicom(root, out, Pseudonymiser(KEY)).scanned == 0
    changed = written.files[0].stat()
    os.utime(written.files[0], ns=(changed.st_atime_ns, changed.st_mtime_ns + 10**9))
    (root / "a" / "new.txt").write_text("x")
    again = scan_dicom(root, out, Pseudonymiser(KEY))
    assert (again.scanned, again.unreadable) == (2, 1)


def test_a_rerun_keeps_what_it_converted(tmp_path: Path) -> None:
    """A NIfTI made from the same files is kept; a missing one, or one whose slices changed, is made again."""
    root, out = tmp_path / "archive", tmp_path / "out"
    write_series(root / "jane" / "t1", patient=JANE, series=1)
    write_series(root / "jane" / "t2", patient=JANE, series=2, description="AX T2 FSE", tr=4000, te=100)
    changed = write_series(root / "john" / "t1", patient=JOHN, series=1)
    write_series(root / "john" / "t2", patient=JOHN, series=2, description="AX T2 FSE", tr=4000, te=100)
    first = ingest_dicom(root, out, Pseudonymiser(KEY), site="a")
    made = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    outputs = files_under(out)
    assert len(made) == 4

    again = ingest_dicom(root, out, Pseudonymiser(KEY), site="a")
    assert {p: p.stat().st_mtime_ns for p in made} == made and again.problems == first.problems
    assert files_under(out) == outputs

    pseudonymiser = Pseudonymiser(KEY)
    jane_t2 = out / pseudonymiser.patient(JANE.patient_id)
    jane_t2 = next(jane_t2.glob("*/t2.nii.gz"))
    jane_t2.unlink()
    stat = changed.files[2].stat()
    os.utime(changed.files[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    ingest_dicom(root, out, pseudonymiser, site="a")
    john_t1 = next((out / pseudonymiser.patient(JOHN.patient_id)).glob("*/t1.nii.gz"))
    assert {p for p in made if p.stat().st_mtime_ns != made[p]} == {jane_t2, john_t1}
    assert files_under(out) == outputs


def test_a_sharded_conversion_needs_the_whole_scan(tmp_path: Path) -> None:
    root, out = archive(tmp_path / "archive"), tmp_path / "out"
    scan_dicom(root, out, Pseudonymiser(KEY), shard=Shard(0, 2))
    with pytest.raises(
        ValueError, match=r"files under ROOT are not in the header table .* --scan-only --shard i/n` for every part"
    ):
        ingest_dicom(root, out, Pseudonymiser(KEY), site="a", shard=Shard(0, 3))
    scan_dicom(root, out, Pseudonymiser(KEY), shard=Shard(1, 2))
    assert ingest_dicom(root, out, Pseudonymiser(KEY), site="a", shard=Shard(0, 3)).series is not None


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (None, r"shards \[1\] of 3 missing"),
        ({"site": "b"}, "made from different files under ROOT or with different --site or --rules"),
        ({"rules": SeriesRules(min_slices=4)}, "different --site or --rules"),
    ],
    ids=["missing-part", "other-site", "other-rules"],
)
def test_merge_refuses_an_incomplete_or_mixed_set_of_parts(tmp_path: Path, second: dict | None, message: str) -> None:
    root, out = archive(tmp_path / "archive"), tmp_path / "out"
    ingest_dicom(root, out, Pseudonymiser(KEY), site="a", shard=Shard(0, 1))  # scans; an n = 1 run writes no part
    for i in (0, 2):
        ingest_dicom(root, out, Pseudonymiser(KEY), site="a", shard=Shard(i, 3))
    if second is not None:
        ingest_dicom(root, out, Pseudonymiser(KEY), **({"site": "a"} | second), shard=Shard(1, 3))
    with pytest.raises(ValueError, match=message):
        merge_dicom(out)


def test_a_table_of_another_key_is_refused(tmp_path: Path) -> None:
    """Pseudonyms and hashes of two keys never mix in one output folder."""
    write_series(tmp_path / "archive")
    scan_dicom(tmp_path / "archive", tmp_path / "out", Pseudonymiser(KEY))
    with pytest.raises(ValueError, match="scanned with another pseudonymisation key"):
        ingest_dicom(tmp_path / "archive", tmp_path / "out", Pseudonymiser(b"x" * 32))
