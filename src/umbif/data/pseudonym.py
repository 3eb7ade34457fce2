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
keyed hashes. The withheld set can be kept as keyed hashes of its tokens (:meth:`Withheld.digests`), which
is how the DICOM header table stores it: it finds the same identifiers, and names none of them.

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
DAY_SHIFT_RANGE = 2**48  # stored day numbers carry a keyed offset per patient this large: no date can be told
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

    def keyed(self, kind: str, value: str, length: int = 16) -> str:
        """A keyed hash of ``value`` (``length`` hex digits) for the tables ingest keeps between its stages: what
        ``kind`` of value it is (a path, a UID, a withheld token) keeps equal values of two kinds apart."""
        return hmac.digest(self._key, f"{kind}\x00{value}".encode(), "sha256").hex()[:length]

    def check(self) -> str:
        """A keyed hash of a constant: stored with keyed tables so that a run with another key refuses them."""
        return self.keyed("key check", "umbif")

    def day_shift(self, patient_id: str) -> int:
        """A secret number of days per patient (up to 2**48) added to a study's day number before it is stored:
        differences within a patient, and so the timepoints, survive; the calendar date does not, not even its
        year (the offset dwarfs every plausible date)."""
        return int(self.keyed("day shift", patient_id.strip(), 12), 16) % DAY_SHIFT_RANGE

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


def day_offsets(dates: Mapping[str, dt.date | int | None], groups: Mapping[str, str]) -> dict[str, int | None]:
    """Dates as days since each patient's first dated exam: the only time information that survives.

    Args:
        dates: exam key -> date, or day number (an ordinal, shifted or not: only differences count); None
            when unknown.
        groups: exam key -> patient key.

    Returns:
        exam key -> days since that patient's earliest date (0 for the first), None when undated.
    """
    days = {exam: date.toordinal() if isinstance(date, dt.date) else date for exam, date in dates.items()}
    first: dict[str, int] = {}
    for exam, day in days.items():
        if day is not None:
            patient = groups[exam]
            first[patient] = min(first.get(patient, day), day)
    return {exam: None if day is None else day - first[groups[exam]] for exam, day in days.items()}


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


def withheld_tokens(identifiers: Identifiers) -> set[tuple[str, str]]:
    """The tokens :class:`Withheld` looks for, as ``(kind, text)``: ``l`` a word of letters of a name (two letters
    and up), ``m`` a word of letters and digits, ``n`` a number of four digits and up, ``t`` a spelling of a header
    date (:func:`date_spellings`), ``c<L>`` a name or id glued together (``L`` characters) and ``p`` its first four
    characters; all lower case without accents."""
    tokens: set[tuple[str, str]] = set()

    def number(digits: str) -> None:
        if len(digits) >= 4:
            tokens.add(("n", digits))

    def glued(text: str, shortest: int = 4) -> None:
        compact = "".join(_ALNUM.findall(text))
        if len(compact) >= shortest and _LETTERS.search(compact):
            tokens.update({(f"c{len(compact)}", compact), ("p", compact[:4])})

    for value in identifiers.names:
        folded = _fold(value)
        for word in _ALNUM.findall(folded):
            if word.isdigit():
                number(word)
            elif len(word) >= 2:
                tokens.add(("l" if word.isalpha() else "m", word))
        parts = [p for p in folded.split("=")[0].split("^") if p.strip()]  # PN: family^given^middle
        for joined in (folded, *([parts[1] + parts[0], parts[0] + parts[1]] if len(parts) > 1 else [])):
            glued(joined, shortest=6)  # shorter glued names match across ordinary words
    for value in identifiers.ids:
        folded = _fold(value)
        if _LETTERS.search(folded):
            glued(folded)
            tokens.update(("m", w) for w in _ALNUM.findall(folded) if len(w) >= 4 and not w.isalpha())
        else:
            number("".join(_DIGITS.findall(folded)))
    for value in identifiers.dates:
        date = parse_date(value)
        if date is None:
            number("".join(_DIGITS.findall(value)))
        else:
            tokens.update(("t", spelled) for spelled in date_spellings(date))
    return tokens


class Withheld:
    """The withheld set: finds an identifier, any calendar date or a UID in a text (a series description, a
    file or folder name) however it is typed.

    Names match as whole words (not glued to other letters) down to two letters, and glued together
    (``SMITHJOHN``); ids match whole, with or without separators; the header's dates match in every
    spelling of :func:`date_spellings`, and any other date (YYYYMMDD, YYYY-MM-DD, DD.MM.YYYY, DD/MM/YYYY,
    MM/DD/YYYY, ``4 Mar 2021``) and any UID-like number (``1.2.840.113619...``) match too. Case and accents
    are ignored.

    Args:
        identifiers: what to withhold.
        pseudonymiser: when given, the set keeps keyed hashes of its tokens (:func:`withheld_tokens`) instead of
            the tokens: it finds the same identifiers, and :attr:`tokens` can be stored without naming anyone.
        tokens: more of :attr:`tokens` as stored by a set with the same key (or none).
    """

    def __init__(
        self,
        identifiers: Identifiers = Identifiers(),
        pseudonymiser: Pseudonymiser | None = None,
        tokens: Iterable[str] = (),
    ):
        self._pseudonymiser = pseudonymiser
        self.tokens: frozenset[str] = frozenset(
            {self._token(kind, text) for kind, text in withheld_tokens(identifiers)} | set(tokens)
        )
        kinds = {token.split(":", 1)[0] for token in self.tokens}
        self._lengths = sorted(int(kind[1:]) for kind in kinds if kind.startswith("c"))  # of the glued tokens

    def _token(self, kind: str, text: str) -> str:
        """``kind:text``, or ``kind:`` and the keyed hash of both (the kind stays readable: ``c9`` says how long)."""
        if self._pseudonymiser is None:
            return f"{kind}:{text}"
        return f"{kind}:{self._pseudonymiser.keyed('withheld', kind + chr(0) + text)}"

    def _has(self, kind: str, text: str) -> bool:
        return self._token(kind, text) in self.tokens

    def holds(self, text: str) -> bool:
        """Whether ``text`` holds an identifier, a date or a UID."""
        folded = _fold(text)
        if _UID.search(folded) or _MONTH_DATE.search(folded):
            return True
        if any(_calendar(numbers) or self._has("t", window) for window, numbers in _number_windows(folded)):
            return True
        digits = set(_DIGITS.findall(folded)) | set(_DIGITS.findall(_JOINED_DIGITS.sub("", folded)))
        runs = _ALNUM.findall(folded)
        words = (
            {("l", w) for w in _LETTERS.findall(folded) if len(w) >= 2}
            | {("n", d) for d in digits if len(d) >= 4}
            | {("m", r) for r in runs if len(r) >= 2}
        )
        if any(self._has(kind, word) for kind, word in words):
            return True
        compact = "".join(runs)
        return any(
            self._has(f"c{length}", compact[i : i + length])
            for i in range(len(compact) - 3)
            if self._has("p", compact[i : i + 4])
            for length in self._lengths
            if i + length <= len(compact)
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
