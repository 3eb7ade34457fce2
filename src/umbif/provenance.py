"""What produced a result: package versions, git commit, machine, config and seed, written as JSON
beside every output so that any number umbif prints can be traced and reproduced."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from umbif.utils import write_json

_PACKAGES = ("umbif", "torch", "monai", "numpy", "scipy", "nibabel", "SimpleITK", "pandas", "pydantic")


def versions() -> dict[str, str]:
    """Installed versions of umbif and the libraries its results depend on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the umbif source tree, when it is a git checkout (None for an installed wheel)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def machine() -> dict[str, Any]:
    import os

    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}


def provenance(config: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "git_commit": git_commit(),
        "machine": machine(),
        "seed": seed,
        "config": config,
    }


def write_provenance(path: str | Path, config: dict[str, Any] | None = None, seed: int | None = None) -> None:
    """Write ``provenance(config, seed)`` as JSON to ``path`` atomically."""
    write_json(path, provenance(config, seed))
