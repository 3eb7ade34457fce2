"""Pseudonymisation at ingest: patient ids become keyed hashes, dates become day offsets per patient,
and free text (series descriptions, file and folder names) is checked for identifiers before it leaves.

The key is the user's secret (a file or the ``UMBIF_PSEUDONYM_KEY`` environment variable) and is
never written next to the data: without it nobody can recompute a pseudonym from a real id, and
with it the same patient gets the same pseudonym across ingests and sites, so follow-up exams join
their baseline. HMAC-SHA256 (RFC 2104) is the standard keyed hash; a plain hash of an id would be
reversible by trying every plausible id.

The identifiers of every file read (:class:`Identifiers`: person and organisation names, ids, dates) make
up the withheld set (:class:`Withheld`); a text that holds one of them, or any date or UID, is withheld,
and a file's path is named by :class:`PathNamer` relative to its exam, with withheld names replaced by
keyed hashes.

Example:
    >>> p = Pseudonymiser(b"0123456789abcdef0123456789abcdef")
    >>> p.patient("John^Doe 123456")  # doctest: +ELLIPSIS
    'P-...'
    >>> Withheld(Identifiers(names=frozenset({"Li^Wei"}))).holds("T1 post LI 03/04/2021")
    True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

KEY_ENV = "UMBIF_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16
NEW_KEY_HINT = (
    "create one with `python -c 'import secrets; print(secrets.token_hex(32))' > ~/umbif.key`, "
    "keep it away from the data (the same key gives the same pseudonyms next time), and pass "
    f"--key-file ~/umbif.key or set {KEY_ENV}"
)


class Pseudonymiser:
    """Keyed pseudonyms for patient and exam identifiers.

    Args:
        key: the secret, at least 16 bytes.

    Raises:
        ValueError: the key is too short.
    """

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the pseudonymisation key must have at least {MIN_KEY_BYTES} bytes; {NEW_KEY_HINT}")
        self._key = key

    def __repr__(self) -> str:  # never show the key, not even in a traceback
        return "Pseudonymiser(key=<hidden>)"

    @classmethod
    def from_user(cls, key_file: str | Path | None = None) -> Pseudonymiser:
        """The key from ``key_file`` (surrounding whitespace ignored), else from ``$UMBIF_PSEUDONYM_KEY``.

        Raises:
            ValueError: no key given, or too short.
            FileNotFoundError: ``key_file`` does not exist.
        """
        if key_file is not None:
            path = Path(key_file).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"key file {path} does not exist; {NEW_KEY_HINT}")
            return cls(path.read_bytes().strip())
        value = os.environ.get(KEY_ENV, "").strip()
        if not value:
            raise ValueError(f"pseudonymisation needs a secret key and none was given; {NEW_KEY_HINT}")
        return cls(value.encode())

    def _digest(self, kind: str, value: str, length: int) -> str:
        message = f"{kind}\x00{value.strip()}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:length]

    def patient(self, patient_id: str) -> str:
        """The pseudonym of a patient id: ``P-`` and 16 hex digits (64 bits; collisions are negligible
        for any archive)."""
        return "P-" + self._digest("patient", patient_id, 16)

    def exam(self, patient_id: str, study: str) -> str:
        """The pseudonym of one exam (e.g. a StudyInstanceUID) of a patient: ``<patient pseudonym>-E`` and
        8 hex digits."""
        return f"{self.patient(patient_id)}-E" + self._digest("exam", patient_id + "\x00" + study, 8)

    def name(self, text: str) -> str:
        """The stand-in for a file or folder name that holds an identifier: ``~`` and 8 hex digits."""
        return "~" + self._digest("name", text, 8)


def parse_date(value: str) -> dt.date | None:
    """A DICOM DA (``YYYYMMDD``) or ISO date, or None when empty or unreadable."""
    text = str(value).strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text[:10] if "-" in text else text[:8], fmt).date()
        except ValueError:
            continue
    return None


def day_offsets(dates: Mapping[str, dt.date | None], groups: Mapping[str, str]) -> dict[str, int | None]:
    """Dates as days since each patient's first dated exam: the only time information that survives.

    Args:
        dates: exam key -> date (None when unknown).
        groups: exam key -> patient key.

    Returns:
        exam key -> days since that patient's earliest date (0 for the first), None when undated.
    """
    first: dict[str, dt.date] = {}
    for exam, date in dates.items():
        if date is not None:
            patient = groups[exam]
            first[patient] = min(first.get(patient, date), date)
    return {exam: None if date is None else (date - first[groups[exam]]).days for exam, date in dates.items()}


def leaks(texts: Iterable[str], identifiers: Iterable[str], min_length: int = 4) -> list[str]:
    """Which identifiers (names, ids, dates, UIDs) occur in any of ``texts``, case-insensitively;
    for checking outputs before they leave. Identifiers shorter than ``min_length`` are ignored."""
    wanted = {i.strip().lower() for i in identifiers if len(i.strip()) >= min_length}
    found = set()
    for text in texts:
        lowered = text.lower()
        found |= {i for i in wanted if i in lowered}
    return sorted(found)


# ------------------------------------------------------------------------------------ withheld text
_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters: a name matches as a whole word, down to two letters
_DIGITS = re.compile(r"\d+")
_ALNUM = re.compile(r"[^\W_]+")
_JOINED_DIGITS = re.compile(r"(?<=\d)[\s./-](?=\d)")  # 123-456 is the id 123456
_NUMBERS = re.compile(r"\d+(?:[./-]\d+)*")  # a date is a run of numbers joined by . / or -
_UID = re.compile(r"\d+(?:\.\d+){4,}")  # 1.2.840.113619.2.55...
_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_MONTH_DATE = re.compile(  # 4 Mar 2021, 04-MAR-21, March 4, 2021
    rf"(?<!\d)\d{{1,2}}[\s./-]*(?:{_MONTHS})[a-z]*\.?[\s./-]*\d{{2,4}}(?!\d)|(?:{_MONTHS})[a-z]*\.?\s*\d{{1,2}},?\s+\d{{4}}"
)
_SEPARATORS = (".", "/", "-")


def _fold(text: str) -> str:
    """Lower case without accents (``Müller`` -> ``muller``), for comparing names however they are typed."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _calendar(numbers: Sequence[str]) -> bool:
    """Whether one 8-digit number (YYYYMMDD) or three numbers (Y-M-D, D.M.Y or M/D/Y) form a date of 1900-2099."""

    def valid(year: str, month: str, day: str) -> bool:
        try:
            return len(year) == 4 and 1900 <= int(year) <= 2099 and bool(dt.date(int(year), int(month), int(day)))
        except ValueError:
            return False

    if len(numbers) == 1:
        text = numbers[0]
        return len(text) == 8 and valid(text[:4], text[4:6], text[6:])
    first, second, third = numbers
    return valid(first, second, third) or valid(third, second, first) or valid(third, first, second)


def _number_windows(text: str) -> Iterable[tuple[str, tuple[str, ...]]]:
    """Every number and every three numbers joined by one separator (``04.03.2021``) in ``text``, with their
    numbers: the places a date can hide."""
    for match in _NUMBERS.finditer(text):
        parts = re.split(r"([./-])", match.group(0))
        numbers, separators = parts[0::2], parts[1::2]
        for i, number in enumerate(numbers):
            yield number, (number,)
            if i + 2 < len(numbers) and separators[i] == separators[i + 1]:
                window = numbers[i : i + 3]
                yield separators[i].join(window), tuple(window)


def date_spellings(date: dt.date) -> set[str]:
    """How people type ``date``: YYYYMMDD, YYYY-MM-DD, DD.MM.YYYY, DD/MM/YYYY, MM/DD/YYYY (with ``.``, ``/`` or
    ``-``, with or without leading zeros), two-digit years, and the glued DDMMYYYY, MMDDYYYY, YYMMDD."""
    year, short = f"{date.year:04d}", f"{date.year % 100:02d}"
    spelled = set()
    for month, day in ((f"{date.month:02d}", f"{date.day:02d}"), (str(date.month), str(date.day))):
        for y in (year, short):
            for sep in _SEPARATORS:
                spelled |= {sep.join((day, month, y)), sep.join((month, day, y)), sep.join((y, month, day))}
            spelled |= {y + month + day, day + month + y, month + day + y} if len(month + day) == 4 else set()
    return spelled


@dataclass(frozen=True)
class Identifiers:
    """What identifies a person in a header, kept in memory to find it again in free text; never written.

    ``names`` are person names (every PN tag: patient, other and birth names, referring, performing and
    reading physicians, operators) and organisations and addresses (institution name, address and
    department); ``ids`` are PatientID, accession number and the like; ``dates`` are the header's dates.
    """

    names: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset()

    @classmethod
    def union(cls, many: Iterable[Identifiers]) -> Identifiers:
        names: set[str] = set()
        ids: set[str] = set()
        dates: set[str] = set()
        for one in many:
            names |= one.names
            ids |= one.ids
            dates |= one.dates
        return cls(frozenset(names), frozenset(ids), frozenset(dates))


class Withheld:
    """The withheld set: finds an identifier, any calendar date or a UID in a text (a series description, a
    file or folder name) however it is typed.

    Names match as whole words (not glued to other letters) down to two letters, and glued together
    (``SMITHJOHN``); ids match whole, with or without separators; the header's dates match in every
    spelling of :func:`date_spellings`, and any other date (YYYYMMDD, YYYY-MM-DD, DD.MM.YYYY, DD/MM/YYYY,
    MM/DD/YYYY, ``4 Mar 2021``) and any UID-like number (``1.2.840.113619...``) match too. Case and accents
    are ignored.
    """

    def __init__(self, identifiers: Identifiers):
        self.letters: set[str] = set()  # words of letters, matched against the text's runs of letters
        self.digits: set[str] = set()  # numbers of 4 digits or more, matched against its runs of digits
        self.mixed: set[str] = set()  # words of letters and digits, matched against its runs of both
        self._compact: dict[str, set[str]] = defaultdict(set)  # first 4 characters -> glued names and ids
        self.dates: set[str] = set()
        for value in identifiers.names:
            folded = _fold(value)
            for word in _ALNUM.findall(folded):
                if word.isdigit():
                    self._add_number(word)
                elif len(word) >= 2:
                    (self.letters if word.isalpha() else self.mixed).add(word)
            parts = [p for p in folded.split("=")[0].split("^") if p.strip()]  # PN: family^given^middle
            for joined in (folded, *([parts[1] + parts[0], parts[0] + parts[1]] if len(parts) > 1 else [])):
                self._add_compact(joined, shortest=6)  # shorter glued names match across ordinary words
        for value in identifiers.ids:
            folded = _fold(value)
            if _LETTERS.search(folded):
                self._add_compact(folded)
                self.mixed |= {w for w in _ALNUM.findall(folded) if len(w) >= 4 and not w.isalpha()}
            else:
                self._add_number("".join(_DIGITS.findall(folded)))
        for value in identifiers.dates:
            date = parse_date(value)
            if date is None:
                self._add_number("".join(_DIGITS.findall(value)))
            else:
                self.dates |= date_spellings(date)

    def _add_number(self, digits: str) -> None:
        if len(digits) >= 4:
            self.digits.add(digits)

    def _add_compact(self, text: str, shortest: int = 4) -> None:
        compact = "".join(_ALNUM.findall(text))
        if len(compact) >= shortest and _LETTERS.search(compact):
            self._compact[compact[:4]].add(compact)

    def holds(self, text: str) -> bool:
        """Whether ``text`` holds an identifier, a date or a UID."""
        folded = _fold(text)
        if _UID.search(folded) or _MONTH_DATE.search(folded):
            return True
        if any(window in self.dates or _calendar(numbers) for window, numbers in _number_windows(folded)):
            return True
        digits = set(_DIGITS.findall(folded)) | set(_DIGITS.findall(_JOINED_DIGITS.sub("", folded)))
        runs = _ALNUM.findall(folded)
        if self.letters & set(_LETTERS.findall(folded)) or self.digits & digits or self.mixed & set(runs):
            return True
        compact = "".join(runs)
        return any(
            compact.startswith(candidate, i)
            for i in range(len(compact) - 3)
            for candidate in self._compact.get(compact[i : i + 4], ())
        )


class PathNamer:
    """How a file or folder under ROOT is named in outputs: never by its raw path.

    The folder that holds all files of one exam and none of another's (else of one patient) is named by
    the exam's (patient's) pseudonym and the folders above it are left out; below it, a name that holds a
    withheld identifier, a date or a UID, or an unprintable character, becomes a keyed hash
    (:meth:`Pseudonymiser.name`). ROOT itself is never named. ``Smith_John/2021-03-04/3_T1/IM1`` becomes
    ``P-3f9c...-E81d0.../3_T1/IM1``.

    Args:
        pseudonymiser: the key for the hashes.
        withheld: the identifiers of every file read.
        owners: from the most to the least specific level, pseudonym -> the paths (posix, under ROOT) of its
            files: ``[{exam: paths}, {patient: paths}]``.
    """

    def __init__(
        self, pseudonymiser: Pseudonymiser, withheld: Withheld, owners: Sequence[Mapping[str, Iterable[str]]] = ()
    ):
        self._pseudonymiser, self.withheld = pseudonymiser, withheld
        self._anchors: dict[tuple[str, ...], str] = {}
        for level in owners:
            for folder, name in _exclusive_folders(level).items():
                self._anchors.setdefault(folder, name)
        self._names: dict[str, str] = {}

    def __call__(self, relative: str, folder: bool = False) -> str:
        """The output name of ``relative`` (a file, or a folder when ``folder``); ``.`` for ROOT."""
        parts = tuple(p for p in PurePosixPath(relative).parts if p != ".")
        for k in range(len(parts) if folder else len(parts) - 1, -1, -1):
            if parts[:k] in self._anchors:
                shown = [self._name(p) for p in parts[k:]]
                prefix = [self._anchors[parts[:k]]] if k else []
                return "/".join(prefix + shown) or "."
        return "/".join(self._name(p) for p in parts) or "."

    def _name(self, part: str) -> str:
        if part not in self._names:
            hidden = self.withheld.holds(part) or not part.isprintable()
            self._names[part] = self._pseudonymiser.name(part) if hidden else part
        return self._names[part]


def _exclusive_folders(owners: Mapping[str, Iterable[str]]) -> dict[tuple[str, ...], str]:
    """Folder -> owner, for each owner whose files' deepest common folder holds no other owner's file."""
    holders: dict[tuple[str, ...], set[str]] = defaultdict(set)
    common: dict[str, tuple[str, ...]] = {}
    for name, paths in owners.items():
        parents = {tuple(p for p in PurePosixPath(path).parent.parts if p != ".") for path in paths}
        for parent in parents:
            for k in range(len(parent) + 1):
                holders[parent[:k]].add(name)
        if parents:
            common[name] = _common_prefix(parents)
    return {folder: name for name, folder in common.items() if holders[folder] == {name}}


def _common_prefix(folders: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The longest leading run of folder names that all ``folders`` share."""
    ordered = sorted(folders)
    first, last = ordered[0], ordered[-1]
    k = 0
    while k < min(len(first), len(last)) and first[k] == last[k]:
        k += 1
    return first[:k]
