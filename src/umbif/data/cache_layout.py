"""The files of an exam cache, and the checks every reader of them makes.

Layout of a cache folder (nnU-Net style: a plan on disk, one entry per exam)::

    plan.json                    preprocessing config, its fingerprint, versions (the "plan")
    exams/<key>.image.npy        float16 [P, X, Y, Z], the P present sequences in canonical order
    exams/<key>.masks.npy        uint8 [2, X, Y, Z]: brain mask, tumour segmentation labels
    exams/<key>.json             the entry: exam id, sequences, affine, sizes, checksums, fingerprints
    exams/<key>.failed.json      why an exam could not be preprocessed (one per quarantined exam)
    index.json                   all valid entries, rebuilt at the end of every run
    quarantine.csv               exam, file and reason for every quarantined exam

``<key>`` is :func:`umbif.utils.safe_name` of the exam id (an over-long id is shortened with a hash).
Everything read back is checked: ``plan.json`` and ``index.json`` must be the mappings umbif wrote, a
file name from the index must be a plain name inside ``exams/``, and an array must have the size and
checksum of its entry. A failed check is a :class:`CacheError` that names the file (and the exam) and
says to rerun ``umbif preprocess``, which rebuilds what fails. The writer is :mod:`umbif.data.cache`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from umbif.utils import safe_name, sha256_file

EXAMS_DIR = "exams"
KINDS: dict[str, tuple[str, int]] = {"image": ("float16", 0), "masks": ("uint8", 2)}  # dtype, channels (0: P)
REBUILD = "the cache file is damaged: rerun `umbif preprocess` on the same manifest to rebuild it"


class CacheError(ValueError):
    """A cache file that cannot be used (damaged, truncated, not what the index says); the message names
    the file, the exam where there is one, and says to rerun ``umbif preprocess``."""


def entry_paths(cache_dir: Path, exam_id: str) -> dict[str, Path]:
    """The files of one exam: ``image``, ``masks``, ``entry`` and ``failed``."""
    key = safe_name(exam_id)
    base = cache_dir / EXAMS_DIR
    return {
        "image": base / f"{key}.image.npy",
        "masks": base / f"{key}.masks.npy",
        "entry": base / f"{key}.json",
        "failed": base / f"{key}.failed.json",
    }


def array_path(cache_dir: Path, entry: dict[str, Any], kind: str) -> Path:
    """The file of one array of an entry; a name from the index that is not a plain file name is refused."""
    name = entry.get("files", {}).get(kind) if isinstance(entry.get("files"), dict) else None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\0" in name:
        raise CacheError(
            f"exam {entry.get('exam_id')!r}: the index names {name!r} as its {kind} file, not a file name in "
            f"the cache; {REBUILD}"
        )
    return cache_dir / EXAMS_DIR / name


def _read_json(cache_dir: str | Path, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A cache's ``plan.json`` or ``index.json``, checked to be a mapping with ``keys``.

    Raises:
        FileNotFoundError: no such file (the message says to run ``umbif preprocess``).
        CacheError: the file is damaged or not a cache file.
    """
    path = Path(cache_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `umbif preprocess MANIFEST --out {cache_dir}` first")
    rewrite = f"rerun `umbif preprocess MANIFEST --out {cache_dir}` to rewrite it"
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise CacheError(f"{path}: not readable JSON ({err}); {rewrite}") from None
    if not isinstance(document, dict) or any(key not in document for key in keys):
        raise CacheError(f"{path}: not a umbif cache file (expected keys {', '.join(keys)}); {rewrite}")
    return document


def read_index(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``index.json``: the plan fingerprint and one entry per cached exam."""
    index = _read_json(cache_dir, "index.json", ("plan_fingerprint", "exams"))
    exams = index["exams"]
    if not isinstance(exams, list) or not all(isinstance(e, dict) and isinstance(e.get("exam_id"), str) for e in exams):
        path = Path(cache_dir) / "index.json"
        raise CacheError(f"{path}: its exams are not cache entries; rerun `umbif preprocess` to rewrite it")
    return index


def read_plan(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``plan.json``: ``plan_fingerprint``, ``preprocess`` (the PreprocessConfig), versions."""
    return _read_json(cache_dir, "plan.json", ("plan_fingerprint", "preprocess"))


def verify_entry(cache_dir: str | Path, entry: dict[str, Any]) -> None:
    """Check an entry's files against the sizes (entries written since sizes are recorded) and checksums
    in the index.

    Raises:
        CacheError: a file is missing, or its size or content changed since it was written.
    """
    for kind in entry["files"]:
        path = array_path(Path(cache_dir), entry, kind)
        size = path.stat().st_size if path.is_file() else None
        expected_size = entry.get("bytes", {}).get(kind)
        if size is None or (expected_size is not None and size != expected_size):
            found = "missing" if size is None else f"{size} bytes, not {expected_size}"
            raise CacheError(f"{path}: exam {entry['exam_id']}: {found}; {REBUILD}")
        digest = sha256_file(path)
        if digest != entry["sha256"][kind]:
            raise CacheError(
                f"{path}: checksum mismatch for exam {entry['exam_id']} ({digest[:12]} != "
                f"{entry['sha256'][kind][:12]}); {REBUILD}"
            )
