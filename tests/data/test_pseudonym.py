"""Pseudonyms: keyed (HMAC-SHA256, checked against the standard library), stable, key-dependent,
never revealing the key; dates as day offsets per patient."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from pathlib import Path

import pytest

from umbif.data.pseudonym import KEY_ENV, Pseudonymiser, day_offsets, leaks, parse_date

KEY = b"k" * 32


def test_patient_pseudonym_is_the_keyed_hash() -> None:
    expected = hmac.new(KEY, b"patient\x00Doe^John 0042", hashlib.sha256).hexdigest()[:16]
    assert Pseudonymiser(KEY).patient("Doe^John 0042") == f"P-{expected}"
    assert Pseudonymiser(KEY).patient(" Doe^John 0042 ") == f"P-{expected}"  # stray spaces do not matter


def test_pseudonyms_are_stable_and_depend_on_the_key() -> None:
    one, two = Pseudonymiser(KEY), Pseudonymiser(b"x" * 32)
    assert one.patient("123") == Pseudonymiser(KEY).patient("123")
    assert one.patient("123") != two.patient("123")
    assert one.patient("123") != one.patient("124")
    exam = one.exam("123", "1.2.840.1")
    assert exam.startswith(one.patient("123") + "-E") and exam != one.exam("123", "1.2.840.2")


def test_key_is_never_shown() -> None:
    pseudonymiser = Pseudonymiser(KEY)
    assert "kkkk" not in repr(pseudonymiser) and "kkkk" not in str(pseudonymiser)


def test_key_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "umbif.key"
    key_file.write_text("k" * 32 + "\n")
    assert Pseudonymiser.from_user(key_file).patient("1") == Pseudonymiser(KEY).patient("1")
    monkeypatch.setenv(KEY_ENV, "k" * 32)
    assert Pseudonymiser.from_user().patient("1") == Pseudonymiser(KEY).patient("1")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ValueError, match="--key-file"):
        Pseudonymiser.from_user()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Pseudonymiser.from_user(tmp_path / "missing.key")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Pseudonymiser(b"short")


def test_dates_become_days_since_each_patients_first_exam() -> None:
    dates = {"a1": dt.date(2020, 3, 1), "a0": dt.date(2020, 1, 1), "b0": dt.date(2019, 5, 5), "c0": None}
    groups = {"a1": "A", "a0": "A", "b0": "B", "c0": "C"}
    assert day_offsets(dates, groups) == {"a1": 60, "a0": 0, "b0": 0, "c0": None}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20210314", dt.date(2021, 3, 14)), ("2021-03-14", dt.date(2021, 3, 14)), ("", None), ("garbage", None)],
)
def test_parse_date(text: str, expected: dt.date | None) -> None:
    assert parse_date(text) == expected


def test_leaks_finds_identifiers_case_insensitively() -> None:
    assert leaks(["id P-12ab, name doe^john"], ["Doe^John", "19700101", "ab"]) == ["doe^john"]
    assert leaks(["nothing here"], ["Doe^John"]) == []
