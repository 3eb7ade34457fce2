"""Small shared helpers with side effects: atomic file writes, strict JSON, CSV cells that cannot carry
formulas, safe names, and the check that an output path stays inside its root."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 96  # longest file name safe_name returns (file systems allow 255 bytes; suffixes are added)
STALE_TEMP_S = 24 * 3600  # a temporary file of another host is stale after this long
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting with one as a formula


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give; mkstemp's 0600 would hide outputs


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` through a temporary file in the same folder, renamed over it on success.

    A reader sees the old file or the complete new one, never a half-written file; a crash leaves
    at most a ``.tmp`` file behind, which the next writer of the same path removes.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp")
    except OSError as err:
        raise _clear_os_error(err, path) from err
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _clear_os_error(err, path) from err
        raise


def _writer_tag() -> str:
    """``<host>~<pid>`` of this process, in every temporary file name: stale-file cleanup spares live writers."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
    return f"{host}~{os.getpid()}"


def _clear_os_error(err: OSError, path: Path) -> OSError:
    """A full disk or a read-only folder as one message naming the folder (finished files are kept)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(
            err.errno,
            f"no space left to write in {path.parent}: free some space and rerun (files "
            "already written are complete and kept)",
        )
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OSError(err.errno, f"cannot write in {path.parent} ({os.strerror(err.errno)}); choose another folder")
    return err


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json(path: str | Path, document: Any, indent: int | None = 2) -> None:
    """Write ``document`` as strict JSON, atomically: NaN and infinity are refused (``ValueError``), never
    written as the non-standard ``NaN`` that other JSON readers reject."""
    write_text_atomic(path, json_text(document, indent=indent) + "\n")


def json_text(document: Any, indent: int | None = 2, **options: Any) -> str:
    """``json.dumps`` with ``allow_nan=False``: a NaN or infinity is an error, not a broken file."""
    return json.dumps(document, indent=indent, allow_nan=False, **options)


def remove_stale_temps(path: str | Path) -> None:
    """Delete temporary files that an interrupted :func:`atomic_write` of ``path`` left behind.

    A file of a writer that is still running is kept: one of this host whose process is alive, or one of
    another host (or of an older umbif, without a writer tag) written in the last :data:`STALE_TEMP_S`.
    """
    path = Path(path)
    host, now = _writer_tag().split("~")[0], time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tag = tmp.name[len(path.name) + 2 :].split(".")[0]
        owner, _, pid = tag.partition("~")
        if owner == host and pid.isdigit():
            if _alive(int(pid)):
                continue
        else:
            with contextlib.suppress(FileNotFoundError):
                if now - tmp.stat().st_mtime < STALE_TEMP_S:
                    continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (it starts with ``= + - @``, tab or CR) gets a
    leading ``'``; anything else is returned as it is. Numbers are not text: ``-0.5`` stays a number."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell passed through :func:`csv_cell` (for every CSV umbif writes)."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    text = [c for c in frame.columns if not (is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c]))]
    return frame.assign(**{c: frame[c].map(csv_cell) for c in text}) if text else frame


def csv_unescape(value: Any) -> Any:
    """Undo :func:`csv_cell` when reading a CSV umbif wrote: ``'=x`` is read back as ``=x``."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, checked to lie in ``root`` (symbolic links followed).

    Raises:
        ValueError: ``path`` leads outside ``root`` (e.g. a name with ``..`` or a link out of it).
    """
    root_resolved, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise ValueError(f"{path} leads outside {root}; names from files must stay inside their folder")
    return resolved


SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_component(name: str, what: str = "name") -> str:
    """``name`` if it is one safe path component (letters, digits, ``._-``, no leading dot, at most 96), else
    ``ValueError`` saying what it is: for names read from files a user did not write (task names, pointers)."""
    if not isinstance(name, str) or not SAFE_COMPONENT.match(name) or name in (".", ".."):
        raise ValueError(f"{what} {name!r} is not a safe name (letters, digits, '.', '_', '-'; no path)")
    return name


def safe_name(text: str) -> str:
    """A file-system-safe, collision-free name for an identifier (exam ids become file names).

    Identifiers that are already safe are kept readable; others get their unsafe characters
    replaced and a short hash of the original appended, so two ids never share a file.
    Names longer than :data:`MAX_NAME` are shortened, with a longer hash, to fit any file system.
    """
    cleaned = _UNSAFE.sub("_", text).strip("._") or "x"
    if cleaned == text and len(text) <= MAX_NAME:
        return text
    if len(cleaned) + 9 <= MAX_NAME:
        return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return f"{cleaned[: MAX_NAME - 17]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
