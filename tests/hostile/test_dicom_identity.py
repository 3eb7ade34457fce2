"""A hostile DICOM archive against `umbif ingest dicom` (issue 14): identifiers typed into folder names, file
names and series descriptions, names as short as two letters, dates in every spelling, a damaged copy of an
image, formulas in descriptions and folder names, and a ROOT named after a patient. Nothing identifying may
reach series.csv, the manifest, the NIfTI files or their names, what the command prints, or a log record.

Each test names the promise it checks; the search for leaks (:func:`found`) is written apart from the
matcher the ingest uses, so that a gap in one is not hidden by the same gap in the other.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # tests/data holds the DICOM factory
from dicom_factory import JANE, Patient, output_texts, write_series

from umbif.cli import app
from umbif.data.dicom import WITHHELD, SeriesRules, ingest_dicom
from umbif.data.pseudonym import Identifiers, Pseudonymiser, Withheld
from umbif.utils import FORMULA_START

KEY = b"k" * 32
SMITH = Patient("Smith^John", "889977", "19610203", "ACC555123", "Fakeville Clinic")
LI = Patient("Li^Wei", "PID-0042-LW", "19700101", "ACC123456", "Fakeville Clinic")
MULLER = Patient("Müller^Jürgen", "PID-7777-MU", "19800512", "ACC777888", "Klinikum Nordstadt")
STAFF = {  # every person-name and organisation tag the issue lists, beyond the patient's own
    "OtherPatientNames": "Mustermann^Erika",
    "ReferringPhysicianName": "Nakamura^Hiroshi",
    "PerformingPhysicianName": "Okafor^Chidi",
    "OperatorsName": "Kowalski^Anna",
    "InstitutionAddress": "12 Elm Road, Springfield",
    "InstitutionalDepartmentName": "Neuroradiologie Ostflügel",
    "StudyDescription": "MRI head Smith John 04.03.2021",
}
STUDY_DATE = "20210304"
SPELLINGS = ("20210304", "2021-03-04", "04.03.2021", "04/03/2021", "03/04/2021")  # of STUDY_DATE


def found(texts: list[str], words: list[str]) -> set[str]:
    """Which ``words`` occur in ``texts`` (case and accents as given, and lower-cased): words of letters as
    whole words (not glued to other letters: how a reader spots a name), anything else as a substring."""
    joined = "\n".join(texts).lower()
    hits = set()
    for word in words:
        w = word.lower()
        pattern = rf"(?<![^\W\d_]){re.escape(w)}(?![^\W\d_])" if w.isalpha() else re.escape(w)
        if re.search(pattern, joined):
            hits.add(word)
    return hits


def words_of(*values: str) -> list[str]:
    """The words a leak search looks for: each value, its parts (words of 2 letters and up, other parts of 6
    characters and up: a year alone identifies nobody) and the accent-free spelling of each part."""
    words = set()
    for value in values:
        words.add(value)
        for part in re.split(r"[\^=\s,._/-]+", value):
            if (part.isalpha() and len(part) >= 2) or len(part) >= 6:
                words |= {part, part.replace("ü", "u").replace("ö", "o")}
    return sorted(words)


IDENTIFYING = words_of(
    *(v for p in (SMITH, LI, MULLER) for v in (p.name, p.patient_id, p.birth_date, p.accession, p.institution)),
    *STAFF.values(),
    *SPELLINGS,
    "1961-02-03",
    "03.02.1961",
)


def series_csv(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "series.csv", dtype=str, keep_default_na=False)


# ------------------------------------------------------------------------------------- the matcher
@pytest.mark.parametrize(
    ("text", "holds"),
    [
        ("T1 post SMITH JOHN 03/04/2021", True),
        ("T1 LI", True),  # a name of two letters, as a whole word
        ("T1_Li2", True),  # digits and _ separate words
        ("t1 flair slices lithium", False),  # ... letters do not: "li" glued in a word is no name
        ("T1 SMITHJOHN", True),  # glued first and last name
        ("T1 MULLER", True),  # accents ignored
        ("T1 Nakamura", True),
        ("T1 Springfield", True),
        ("T1 20190102", True),  # any date, in the header or not
        ("T1 2021-03-04", True),
        ("T1 04.03.2021", True),
        ("T1 04/03/2021", True),
        ("T1 03/04/2021", True),
        ("T1 4-Mar-2021", True),
        ("T1 03.02.61", True),  # a header date with a two-digit year
        ("T1 1.2.840.113619.2.55.3", True),  # a UID
        ("PID0042LW", True),  # an id without its separators
        ("AX T1 SE 3mm 256x256 TE 10", False),
        ("ep2d_diff_3scan_trace_p2", False),
        ("IM0001.dcm", False),
    ],
)
@pytest.mark.parametrize("hashed", [False, True], ids=["tokens", "keyed-hashes"])
def test_withheld_finds_identifiers_however_typed(text: str, holds: bool, hashed: bool) -> None:
    """Promise: the withheld set is every person-name and organisation tag, matched as whole words down to two
    letters, and dates in every common spelling; kept as keyed hashes (as the header table stores it), it finds
    the same."""
    identifiers = Identifiers(
        names=frozenset(
            {SMITH.name, LI.name, MULLER.name, STAFF["ReferringPhysicianName"], STAFF["InstitutionAddress"]}
        ),
        ids=frozenset({LI.patient_id}),
        dates=frozenset({SMITH.birth_date}),
    )
    withheld = Withheld(identifiers, Pseudonymiser(KEY) if hashed else None)
    assert withheld.holds(text) is holds
    assert Withheld(pseudonymiser=Pseudonymiser(KEY) if hashed else None, tokens=withheld.tokens).holds(text) is holds
    assert found(list(withheld.tokens), ["smith", "nakamura", "springfield", "0042"]) == (set() if hashed else {
        "smith", "nakamura", "springfield", "0042"})  # fmt: skip


# ---------------------------------------------------------------------------------- descriptions
@pytest.mark.parametrize(
    ("description", "patient", "tags", "typed"),
    [
        ("T1 SE 2021-03-04", SMITH, {}, "2021-03-04"),
        ("T1 SE 04.03.2021", SMITH, {}, "04.03.2021"),
        ("T1 SE 04/03/2021", SMITH, {}, "04/03/2021"),
        ("T1 SE 03/04/2021", SMITH, {}, "03/04/2021"),
        ("T1 SE 20190102", SMITH, {}, "20190102"),  # a date the header does not hold
        ("T1 SE born 03.02.1961", SMITH, {}, "03.02.1961"),
        ("T1 SE LI", LI, {}, "LI"),
        ("T1 SE Erika", SMITH, {"OtherPatientNames": "Mustermann^Erika"}, "Erika"),
        ("T1 SE Dr Nakamura", SMITH, {"ReferringPhysicianName": "Nakamura^Hiroshi"}, "Nakamura"),
        ("T1 SE okafor", SMITH, {"PerformingPhysicianName": "Okafor^Chidi"}, "okafor"),
        ("T1 SE Anna K", SMITH, {"OperatorsName": "Kowalski^Anna"}, "Anna"),
        ("T1 SE Fakeville", SMITH, {}, "Fakeville"),
        ("T1 SE Springfield", SMITH, {"InstitutionAddress": "12 Elm Road, Springfield"}, "Springfield"),
        ("T1 SE MULLER", MULLER, {}, "MULLER"),
    ],
    ids=[
        "iso-date",
        "dotted-date",
        "day-first-date",
        "month-first-date",
        "other-date",
        "birth-date",
        "two-letter-name",
        "other-patient-name",
        "referring-physician",
        "performing-physician",
        "operator",
        "institution-word",
        "institution-address",
        "name-without-accent",
    ],
)
def test_description_with_an_identifier_is_dropped_and_the_series_kept(
    tmp_path: Path, description: str, patient: Patient, tags: dict, typed: str
) -> None:
    """Promise: a series description that still holds a withheld token is dropped; the series is kept."""
    written = write_series(tmp_path / "archive", patient=patient, study_date=STUDY_DATE, description=description,
                           tags=tags)  # fmt: skip
    report = ingest_dicom(tmp_path / "archive", tmp_path / "out", Pseudonymiser(KEY), site="a")
    row = series_csv(tmp_path / "out").iloc[0]
    assert (row["description"], row["decision"]) == (WITHHELD, "t1")
    converted = nib.load(report.manifest.exam(0).sequences["t1"]).get_fdata()
    np.testing.assert_array_equal(converted, written.values)
    texts = [(tmp_path / "out" / "series.csv").read_text(), *report.problems]
    assert found(texts, [typed]) == set()


@pytest.mark.parametrize(
    ("kwargs", "rules"),
    [
        ({"protocol": "ep2d_diff Smith John"}, SeriesRules(other=r"smith[a-z ]*")),  # a reason quotes its match
        ({"tags": {"Modality": "SMITH"}}, None),  # "modality SMITH, not MR"
        ({"image_type": ("DERIVED", "SMITH JOHN")}, None),  # "derived image (ImageType DERIVED/SMITH JOHN)"
    ],
    ids=["quoted-match", "modality", "image-type"],
)
def test_a_reason_never_quotes_an_identifier(tmp_path: Path, kwargs: dict, rules: SeriesRules | None) -> None:
    """Promise: header text quoted in a reason (a rule's match, Modality, ImageType) is withheld too."""
    write_series(tmp_path / "archive", patient=SMITH, description="T1 SE", **kwargs)
    with pytest.raises(ValueError, match="no series was converted"):
        ingest_dicom(tmp_path / "archive", tmp_path / "out", Pseudonymiser(KEY), site="a", rules=rules)
    reason = series_csv(tmp_path / "out")["reason"].iloc[0]
    assert "<withheld>" in reason and found([reason], ["Smith", "John"]) == set()


# ------------------------------------------------------------------------------ file and folder names
def hostile_tree(root: Path) -> list[str]:
    """Two patients whose folders, study folders, series folders and file names carry their identifiers;
    unreadable files, a missing slice and a copy, so that file names reach problem lines. Returns the UIDs."""
    study = root / "Smith_John" / "2021-03-04"
    uids = []
    uids += write_series(study / "3_T1_Smith", patient=SMITH, study_date=STUDY_DATE, series=3, tags=STAFF,
                         description="T1 post Smith John 03/04/2021", contrast_agent="Gd",
                         names=lambda n: f"SMITH_JOHN_{n:03d}.dcm").identifiers  # fmt: skip
    t2 = write_series(study / "4_T2", patient=SMITH, study_date=STUDY_DATE, series=4, description="AX T2 FSE",
                      tr=4000, te=100, tags=STAFF, names=lambda n: f"1.2.840.99.4.{n}.20210304")  # fmt: skip
    uids += t2.identifiers
    uids += write_series(study / "5_FLAIR_Nakamura", patient=SMITH, study_date=STUDY_DATE, series=5,
                         description="FLAIR Okafor", tr=9000, te=120, ti=2500, skip=[3], tags=STAFF,
                         names=lambda n: f"Kowalski_{n}.dcm").identifiers  # fmt: skip
    (study / "3_T1_Smith" / "notes Smith 04.03.2021.txt").write_text("x")
    (root / "Smith_John" / "report_Nakamura.txt").write_text("x")
    (study / "copies of Erika").mkdir()
    (study / "copies of Erika" / "Mustermann.dcm").write_bytes(t2.files[2].read_bytes())
    (root / "Fakeville Clinic").mkdir()
    (root / "Fakeville Clinic" / "Springfield.dcm").write_bytes(t2.files[0].read_bytes()[:300])  # damaged
    uids += write_series(root / "Li Wei" / "2020-01-01" / "T1", patient=LI, study="b", study_date="20200101",
                         description="T1 Li", names=lambda n: f"Li_{n}.dcm").identifiers  # fmt: skip
    uids += write_series(root / "Müller, Jürgen" / "x", patient=MULLER, study="c", study_date="20180708",
                         description="T1 SE").identifiers  # fmt: skip
    return [u for u in uids if re.fullmatch(r"[\d.]+", u) and u.count(".") > 3]


def test_no_file_or_folder_name_reaches_series_csv_or_warnings(tmp_path: Path) -> None:
    """Promise: no raw file or folder name that holds an identifier reaches series.csv or a problem line;
    files are named relative to their exam (its pseudonym), withheld names as keyed hashes."""
    root = tmp_path / "archive"
    uids = hostile_tree(root)
    pseudonymiser = Pseudonymiser(KEY)
    report = ingest_dicom(root, tmp_path / "out", pseudonymiser, site="a")
    table = series_csv(tmp_path / "out")
    texts = [(tmp_path / "out" / "series.csv").read_text(), *report.problems]
    assert found(texts, [*IDENTIFYING, *uids, "Smith_John", "Li Wei"]) == set()
    smith = table[table["patient_id"] == pseudonymiser.patient(SMITH.patient_id)].set_index("series_number")
    exam = smith["exam_id"].iloc[0]
    assert smith.loc["4", "folder"] == f"{exam}/4_T2"  # a neutral folder keeps its name, under its exam
    assert re.fullmatch(rf"{exam}/~[0-9a-f]{{8}}", smith.loc["3", "folder"])  # 3_T1_Smith: a keyed hash
    assert smith.loc["5", "decision"] == "refused" and "a missing slice?" in smith.loc["5", "reason"]
    assert sorted(table["decision"]) == ["refused", "t1", "t1", "t1c", "t2"]
    assert any("copy" in p for p in report.problems) and len(report.problems) == 5  # 3 unreadable, 1 refused
    again = ingest_dicom(root, tmp_path / "out2", pseudonymiser, site="a")
    assert again.problems == report.problems  # keyed hashes are stable: the same key names a file the same way


def test_site_never_defaults_to_a_folder_name(tmp_path: Path) -> None:
    """Promise: --site never defaults to a folder name (ROOT named after the patient)."""
    root = tmp_path / "Smith_John"
    write_series(root, patient=SMITH)
    report = ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY))
    assert set(report.manifest.table["site"]) == {"site"}
    assert any(p.startswith("no site given") for p in report.problems)
    key = tmp_path / "key"
    key.write_text("k" * 64)
    for extra, site in (([], "site"), (["--site", "hospitalA"], "hospitalA")):
        out = tmp_path / f"cli-{site}"
        result = CliRunner().invoke(app, ["ingest", "dicom", str(root), "--out", str(out), "--key-file", str(key),
                                          *extra])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert set(pd.read_csv(out / "manifest.csv", dtype=str)["site"]) == {site}
        assert found([result.output, (out / "manifest.csv").read_text()], ["Smith", "John"]) == set()


# -------------------------------------------------------------------------------------------- copies
@pytest.mark.parametrize("damage", ["pixels", "header"])
@pytest.mark.parametrize("damaged", ["a_export", "z_export"], ids=["damaged-copy-first", "damaged-copy-last"])
def test_the_copy_that_decodes_wins(tmp_path: Path, damaged: str, damage: str) -> None:
    """Promise: when a DICOM image exists twice, the copy that decodes wins, whichever is found first (a copy
    whose pixel data is cut short, or whose header lost its PixelSpacing)."""
    root = tmp_path / "archive"
    written = write_series(root / "m_export", description="AX T1 SE")
    (root / damaged).mkdir()
    copy = root / damaged / written.files[4].name
    if damage == "pixels":
        copy.write_bytes(written.files[4].read_bytes()[:-100])  # header intact
    else:
        ds = pydicom.dcmread(written.files[4])
        del ds.PixelSpacing
        ds.save_as(copy)
    report = ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY), site="a")
    assert series_csv(tmp_path / "out")["decision"].tolist() == ["t1"]
    np.testing.assert_array_equal(nib.load(report.manifest.exam(0).sequences["t1"]).get_fdata(), written.values)


# ------------------------------------------------------------------------------------------ formulas
@pytest.mark.parametrize("start", FORMULA_START)
def test_series_csv_cells_cannot_carry_formulas(tmp_path: Path, start: str) -> None:
    """Promise: every CSV cell starting with = + - @, tab or CR is neutralised (descriptions, folders)."""
    root = tmp_path / "archive"
    write_series(root / f"{start}cmd|' -C calc'!A0", description=f"{start}T1 SE")
    ingest_dicom(root, tmp_path / "out", Pseudonymiser(KEY), site="a")
    rows = list(csv.reader(io.StringIO((tmp_path / "out" / "series.csv").read_text())))
    assert len(rows) == 2 and rows[1][rows[0].index("decision")] == "t1"
    assert [cell for row in rows for cell in row if cell.startswith(FORMULA_START)] == []


# ------------------------------------------------------------------------------- every output, the CLI
ONE_JOB = [[]]
SHARDED = [  # header scan in 2 jobs of 2 workers, conversion in 3 jobs, merge
    *(["--scan-only", "--workers", "2", "--shard", f"{i}/2"] for i in range(2)),
    *(["--shard", f"{i}/3"] for i in range(3)),
    ["--merge"],
]


@pytest.mark.parametrize("commands", [ONE_JOB, SHARDED], ids=["one-job", "sharded"])
def test_nothing_identifying_reaches_any_output_of_the_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, commands: list[list[str]]
) -> None:
    """Promise: no identifier (names of every person and organisation tag, ids, dates in every spelling, UIDs,
    the identifying folder and file names) reaches series.csv, the manifest, the NIfTI files (names, headers,
    data), the header table and records under OUT/.scan and OUT/.convert (cells and metadata), what the commands
    print, or a Python log record; the pseudonyms are today's."""
    root = tmp_path / "Smith_John export"  # ROOT named after a patient: not the site
    uids = hostile_tree(root)
    key = tmp_path / "secret" / "umbif.key"
    key.parent.mkdir()
    key.write_text("k" * 64)
    out = tmp_path / "out"
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    texts = []
    for options in commands:
        result = CliRunner().invoke(
            app, ["ingest", "dicom", str(root), "--out", str(out), "--key-file", str(key), *options]
        )
        assert result.exit_code == 0, result.output
        texts.append(result.output.replace(str(out), "OUT"))
    texts += [r.getMessage() for r in caplog.records]
    assert any((out / ".scan").glob("*.parquet")) and any((out / ".convert").rglob("*.json"))
    files = output_texts(out)
    binary = [text for text in files if "\x00" in text]  # NIfTI files and Parquet tables, as bytes
    texts += [text for text in files if "\x00" not in text]
    for path in out.rglob("*.nii.gz"):
        header = nib.load(path).header
        texts += [str(header[field]) for field in ("descrip", "aux_file", "intent_name", "db_name")]
    words = [*IDENTIFYING, *uids, "Smith_John", "Li Wei"]
    assert found(texts, words) == set()
    assert found(binary, [w for w in words if len(w) >= 4]) == set()
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    assert len(manifest) == 3 and set(manifest["site"]) == {"site"}
    jane_like = Pseudonymiser(b"k" * 64)
    assert set(manifest["patient_id"]) == {jane_like.patient(p.patient_id) for p in (SMITH, LI, MULLER)}


def test_no_log_record_or_warning_quotes_a_header_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Promise: pydicom's log records and warnings, which quote header values, never leave the reading (a
    name typed into SpecificCharacterSet was logged as "Unknown encoding 'Smith John'")."""
    tags = {"SpecificCharacterSet": "Smith John", "InstitutionName": "Smith " * 15}
    with warnings.catch_warnings():  # writing such values warns too; that is the test's own doing
        warnings.simplefilter("ignore")
        write_series(tmp_path / "archive", patient=SMITH, description="T1 SE", tags=tags)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ingest_dicom(tmp_path / "archive", tmp_path / "out", Pseudonymiser(KEY), site="a")
    messages = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert found(messages, ["Smith", "John"]) == set()
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []


def test_pseudonyms_stay_what_they_were(tmp_path: Path) -> None:
    """Promise kept: the same key gives the same patient and exam ids as before the hardening."""
    write_series(tmp_path / "archive", patient=JANE)
    table = ingest_dicom(tmp_path / "archive", tmp_path / "out", Pseudonymiser(KEY), site="a").manifest.table
    assert table[["patient_id", "exam_id"]].values.tolist() == [["P-784a7cc793b03274", "P-784a7cc793b03274-E249f8498"]]
