"""Pseudonymisation at ingest: patient ids become keyed hashes, dates become day offsets per patient.

The key is the user's secret (a file or the ``UMBIF_PSEUDONYM_KEY`` environment variable) and is
never written next to the data: without it nobody can recompute a pseudonym from a real id, and
with it the same patient gets the same pseudonym across ingests and sites, so follow-up exams join
their baseline. HMAC-SHA256 (RFC 2104) is the standard keyed hash; a plain hash of an id would be
reversible by trying every plausible id.

Example:
    >>> p = Pseudonymiser(b"0123456789abcdef0123456789abcdef")
    >>> p.patient("John^Doe 123456")
    'P-...'  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

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
