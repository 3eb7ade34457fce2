"""The manifest: CSV/Parquet round trip, validation with row and column, path safety, exams, summary."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from umbif.data.manifest import (
    COLUMNS,
    Manifest,
    PathEscapeError,
    Problem,
    errors,
    summarize,
    validate,
)

EXAMS = ("e1", "e2")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``tmp_path/data`` with empty stand-in files for two exams (validation only checks that they exist),
    a file outside the root, and a symlink inside the root that points to it."""
    data = tmp_path / "data"
    for exam in EXAMS:
        for name in ("t1", "t1c", "t2", "flair", "seg"):
            (data / exam).mkdir(parents=True, exist_ok=True)
            (data / exam / f"{name}.nii.gz").touch()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.nii.gz").touch()
    (data / "e2" / "link.nii.gz").symlink_to(tmp_path / "outside" / "x.nii.gz")
    return data


def _row(exam: str, **values: str) -> dict[str, str]:
    """A clean manifest row for ``exam``; ``values`` override cells."""
    row = {
        "exam_id": exam,
        "patient_id": f"p-{exam}",
        "site": "siteA",
        "timepoint": "0",
        "t1": f"{exam}/t1.nii.gz",
        "t1c": f"{exam}/t1c.nii.gz",
        "t2": f"{exam}/t2.nii.gz",
        "flair": f"{exam}/flair.nii.gz",
        "idh": "mutant",
        "mgmt": "methylated",
    }
    return row | values


# ------------------------------------------------------------------------------------------ read/write
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_keeps_ids_empty_cells_and_free_columns(tmp_path: Path, suffix: str) -> None:
    table = pd.DataFrame(
        [
            _row("00001", patient_id="007", scanner="Prisma", note=""),
            _row("00002", patient_id="007", site="", timepoint="", idh="", scanner="", note="re-scan, motion"),
        ]
    )
    Manifest(table, tmp_path).write(tmp_path / f"manifest{suffix}")
    back = Manifest.read(tmp_path / f"manifest{suffix}")
    assert list(back.table.columns) == [*COLUMNS, "scanner", "note"]
    assert back.table["exam_id"].tolist() == ["00001", "00002"]
    assert back.table["patient_id"].tolist() == ["007", "007"]
    assert back.table["site"].tolist() == ["siteA", ""]
    assert back.table["timepoint"].tolist() == ["0", ""]
    assert back.table["scanner"].tolist() == ["Prisma", ""]
    assert back.table["note"].tolist() == ["", "re-scan, motion"]
    assert back.table["outcome"].tolist() == ["", ""]  # a standard column that was never given
    assert back.root == tmp_path.resolve()


def test_read_hand_written_csv_keeps_text(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("exam_id,patient_id,timepoint,idh,site\n00001,0042,1.50,,NA\n")
    row = Manifest.read(tmp_path / "m.csv").table.iloc[0]
    assert (row["exam_id"], row["patient_id"], row["timepoint"], row["idh"], row["site"]) == (
        "00001",
        "0042",
        "1.50",
        "",
        "NA",
    )


def test_read_parquet_with_numbers_and_nulls(tmp_path: Path) -> None:
    """A Parquet file written by another tool, with numeric and null cells, reads as the same text as a CSV."""
    pd.DataFrame({"exam_id": ["a", "b"], "patient_id": ["p", None], "timepoint": [3.0, float("nan")]}).to_parquet(
        tmp_path / "m.parquet"
    )
    table = Manifest.read(tmp_path / "m.parquet").table
    assert table["patient_id"].tolist() == ["p", ""]
    assert table["timepoint"].tolist() == ["3", ""]


@pytest.mark.parametrize("name", ["m.xlsx", "m.tsv"])
def test_read_and_write_refuse_other_formats(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("exam_id\n")
    with pytest.raises(ValueError, match=r"must end in \.csv or \.parquet"):
        Manifest.read(tmp_path / name)
    with pytest.raises(ValueError, match=r"must end in \.csv or \.parquet"):
        Manifest(pd.DataFrame([_row("e1")]), tmp_path).write(tmp_path / name)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="umbif ingest"):
        Manifest.read(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------ validate
def test_clean_manifest_has_no_problems(root: Path) -> None:
    manifest = Manifest(pd.DataFrame([_row("e1"), _row("e2", seg="e2/seg.nii.gz", codeletion_1p19q="intact")]), root)
    assert validate(manifest) == []


@pytest.mark.parametrize(
    ("override", "column", "message"),
    [
        ({"t1": "e2/missing.nii.gz"}, "t1", "file not found: e2/missing.nii.gz"),
        ({"idh": "Mutant"}, "idh", "unknown label 'Mutant'; allowed: mutant, wildtype"),
        ({"outcome": "progressed"}, "outcome", "unknown label 'progressed'"),
        ({"exam_id": "e1"}, "exam_id", "duplicate exam_id 'e1' (first in row 1)"),
        ({"t1": "", "t1c": "", "t2": "", "flair": "", "seg": "e2/seg.nii.gz"}, None, "exam has no sequence"),
        ({"t2": "../x.nii.gz"}, "t2", "leads outside the manifest root"),
        ({"seg": "e2/../../outside/x.nii.gz"}, "seg", "leads outside the manifest root"),
        ({"flair": "{outside}"}, "flair", "leads outside the manifest root"),
        ({"t1c": "e2/link.nii.gz"}, "t1c", "leads outside the manifest root"),
        ({"patient_id": ""}, "patient_id", "patient_id is empty"),
        ({"patient_id": "  "}, "patient_id", "patient_id is empty"),
        ({"timepoint": "baseline"}, "timepoint", "timepoint 'baseline' is not a number"),
        ({"timepoint": "inf"}, "timepoint", "timepoint 'inf' is not a number"),
    ],
)
def test_validate_reports_row_and_column(
    root: Path, override: dict[str, str], column: str | None, message: str
) -> None:
    outside = str(root.parent / "outside" / "x.nii.gz")
    override = {k: v.format(outside=outside) for k, v in override.items()}
    manifest = Manifest(pd.DataFrame([_row("e1"), _row("e2", **override)]), root)
    found = errors(validate(manifest))
    assert len(found) == 1, found
    assert (found[0].row, found[0].column) == (2, column)
    assert message in found[0].message


@pytest.mark.parametrize(
    ("override", "column", "message"),
    [
        ({"site": ""}, "site", "site is empty"),
        ({"idh": "wildtype", "codeletion_1p19q": "codeleted"}, "codeletion_1p19q", "not a WHO 2021 entity"),
        ({"patient_id": "p-e1"}, "timepoint", "same patient and timepoint as row 1"),
    ],
)
def test_warnings_are_not_errors(root: Path, override: dict[str, str], column: str, message: str) -> None:
    problems = validate(Manifest(pd.DataFrame([_row("e1"), _row("e2", **override)]), root))
    assert errors(problems) == []
    assert len(problems) == 1
    assert (problems[0].severity, problems[0].row, problems[0].column) == ("warning", 2, column)
    assert message in problems[0].message


def test_validate_reports_every_problem_in_row_order(root: Path) -> None:
    rows = [_row("e1", idh="x"), _row("e2", t1="e2/none.nii.gz", patient_id=""), _row("e1", exam_id="", t2="../x")]
    found = [(p.row, p.column) for p in errors(validate(Manifest(pd.DataFrame(rows), root)))]
    assert found == [(1, "idh"), (2, "patient_id"), (2, "t1"), (3, "exam_id"), (3, "t2")]


def test_validate_without_file_check_still_refuses_escapes(root: Path) -> None:
    manifest = Manifest(pd.DataFrame([_row("e1", t1="e1/none.nii.gz", t2="../x.nii.gz")]), root)
    assert [p.column for p in errors(validate(manifest))] == ["t1", "t2"]
    assert [p.column for p in errors(validate(manifest, check_files=False))] == ["t2"]


def test_validate_rows_checks_the_files_of_those_rows_only(root: Path) -> None:
    """A shard checks the paths of its own rows; the checks of cells and across rows still cover every row."""
    rows = [_row("e1", t1="e1/none.nii.gz"), _row("e2", t2="e2/none.nii.gz", idh="x"), _row("e1", t1="../x")]
    manifest = Manifest(pd.DataFrame(rows), root)

    found = [(p.row, p.column) for p in errors(validate(manifest, rows=[1]))]

    assert found == [(2, "t2"), (2, "idh"), (3, "exam_id")]  # row 1's missing file and row 3's escape are not looked at
    assert [(p.row, p.column) for p in errors(validate(manifest, rows=[]))] == [(2, "idh"), (3, "exam_id")]


def test_validate_stats_each_file_once_and_each_folder_once(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One ``lstat`` per file plus one per folder not seen before (resolve + stat cost 9 per path)."""
    manifest = Manifest(pd.DataFrame([_row("e1", seg="e1/seg.nii.gz"), _row("e2")]), root)
    calls: list[str] = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def counting(path: object, *args: object, real=real, **kwargs: object):
            calls.append(os.fspath(path))  # type: ignore[arg-type]
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, counting)

    assert validate(manifest) == []
    assert sorted(calls) == sorted(
        [str(root / e) for e in EXAMS]
        + [str(root / "e1" / f"{n}.nii.gz") for n in ("t1", "t1c", "t2", "flair", "seg")]
        + [str(root / "e2" / f"{n}.nii.gz") for n in ("t1", "t1c", "t2", "flair")]
    )


@pytest.mark.parametrize(("target", "value", "escapes"), [("outside", "x.nii.gz", True), ("e1", "t1.nii.gz", False)])
def test_a_folder_link_is_followed_like_resolve(root: Path, target: str, value: str, escapes: bool) -> None:
    """A path through a linked folder is resolved in full: out of the root it is refused, inside it is fine."""
    (root / "linked").symlink_to(root.parent / target if escapes else root / target)
    manifest = Manifest(pd.DataFrame([_row("e1", t1=f"linked/{value}")]), root)

    found = errors(validate(manifest))

    assert len(found) == escapes and all("leads outside the manifest root" in p.message for p in found)


def test_missing_required_columns_are_errors(root: Path) -> None:
    manifest = Manifest(pd.DataFrame({"t1": ["e1/t1.nii.gz"] * 3}), root)
    assert [(p.row, p.column) for p in errors(validate(manifest))] == [(None, "exam_id"), (None, "patient_id")]


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (Problem(2, "t1", "file not found"), "error: row 2, t1: file not found"),
        (Problem(3, None, "exam has no sequence"), "error: row 3: exam has no sequence"),
        (Problem(None, "idh", "odd"), "error: idh: odd"),
        (Problem(None, None, "empty manifest", "warning"), "warning: empty manifest"),
    ],
)
def test_problem_text(problem: Problem, text: str) -> None:
    assert str(problem) == text


# ------------------------------------------------------------------------------------------ paths
@pytest.mark.parametrize(
    ("value", "inside"),
    [
        ("e1/t1.nii.gz", True),
        ("./e1/../e2/t1.nii.gz", True),
        ("{root}/e1/t1.nii.gz", True),  # absolute but inside the root
        ("../x.nii.gz", False),
        ("e1/../../outside/x.nii.gz", False),
        ("{outside}", False),
        ("e2/link.nii.gz", False),  # a symlink inside the root that points outside
    ],
)
def test_resolve(root: Path, value: str, inside: bool) -> None:
    value = value.format(root=root, outside=root.parent / "outside" / "x.nii.gz")
    manifest = Manifest(pd.DataFrame([_row("e1")]), root)
    if inside:
        assert manifest.resolve(value) == (root / value).resolve()
        assert manifest.resolve(value).is_relative_to(root)
    else:
        with pytest.raises(PathEscapeError, match="leads outside the manifest root"):
            manifest.resolve(value)


def test_relocate_rewrites_paths_for_a_parent_root(root: Path) -> None:
    manifest = Manifest(pd.DataFrame([_row("e1", seg="e1/seg.nii.gz"), _row("e2", t2="")]), root)
    moved = manifest.relocate(root.parent)
    assert moved.root == root.parent.resolve()
    assert moved.table.loc[0, "t1"] == "data/e1/t1.nii.gz"
    assert moved.table.loc[0, "seg"] == "data/e1/seg.nii.gz"
    assert moved.table.loc[1, "t2"] == ""
    assert moved.exam(0) == manifest.exam(0)
    assert validate(moved) == []


def test_relocate_refuses_a_root_that_does_not_hold_the_files(root: Path) -> None:
    manifest = Manifest(pd.DataFrame([_row("e1")]), root)
    with pytest.raises(PathEscapeError, match="is outside"):
        manifest.relocate(root / "e2")


# ------------------------------------------------------------------------------------------ exams
def test_exam_orders_sequences_and_keeps_known_labels(root: Path) -> None:
    row = _row("e1", t1="", t2="", site="", timepoint="2.5", seg="e1/seg.nii.gz", mgmt="", codeletion_1p19q="intact")
    table = pd.DataFrame([row | {"scanner": "Prisma"}])  # a free column is not a label
    exam = Manifest(table[list(reversed(table.columns))], root).exam(0)  # column order in the input does not matter
    assert list(exam.sequences) == ["t1c", "flair"]
    assert exam.sequences["flair"] == root / "e1" / "flair.nii.gz"
    assert exam.seg == root / "e1" / "seg.nii.gz"
    assert exam.brain_mask is None
    assert exam.labels == {"idh": "mutant", "codeletion_1p19q": "intact"}
    assert (exam.exam_id, exam.patient_id, exam.site, exam.timepoint) == ("e1", "p-e1", "", 2.5)


@pytest.mark.parametrize(("text", "timepoint"), [("", None), ("3", 3.0), ("-1.5", -1.5), ("week 3", None)])
def test_exam_timepoint(root: Path, text: str, timepoint: float | None) -> None:
    assert Manifest(pd.DataFrame([_row("e1", timepoint=text)]), root).exam(0).timepoint == timepoint


def test_exam_refuses_escaping_path(root: Path) -> None:
    manifest = Manifest(pd.DataFrame([_row("e1"), _row("e2", t1c="e2/link.nii.gz")]), root)
    assert manifest.exam(0).exam_id == "e1"
    with pytest.raises(PathEscapeError):
        manifest.exam(1)
    with pytest.raises(PathEscapeError):
        list(manifest.exams())


# ------------------------------------------------------------------------------------------ summary
def test_summarize_counts(root: Path) -> None:
    rows = [
        _row("e1", patient_id="p1", site="A", idh="mutant", mgmt="methylated"),
        _row("e2", patient_id="p1", site="A", t1c="", t2="", idh="wildtype", mgmt=""),
        _row("e3", patient_id="p2", site="B", t1="", t2="", flair="", idh="maybe", mgmt="unmethylated"),
        _row("e4", patient_id="p3", site="", t1c="", flair="", idh="", mgmt="", codeletion_1p19q="codeleted"),
    ]
    tables = summarize(Manifest(pd.DataFrame(rows), root))
    sites = pd.DataFrame(
        {
            "exams": [1, 2, 1, 4],
            "patients": [1, 1, 1, 3],
            "t1": [1, 2, 0, 3],
            "t1c": [0, 1, 1, 2],
            "t2": [1, 1, 0, 2],
            "flair": [0, 2, 0, 2],
        },
        index=pd.Index(["(none)", "A", "B", "total"], name="site"),
    )
    pd.testing.assert_frame_equal(tables["sites"], sites, check_dtype=False)
    labels = tables["labels"].set_index("label")[["positive", "negative", "missing", "invalid"]]
    assert labels.to_dict("index") == {
        "idh": {"positive": 1, "negative": 1, "missing": 1, "invalid": 1},
        "mgmt": {"positive": 1, "negative": 1, "missing": 2, "invalid": 0},
        "codeletion_1p19q": {"positive": 1, "negative": 0, "missing": 3, "invalid": 0},
        "outcome": {"positive": 0, "negative": 0, "missing": 4, "invalid": 0},
    }
    assert tables["labels"].set_index("label").loc["idh", "classes"] == "mutant / wildtype"
