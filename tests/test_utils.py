"""Shared helpers: strict JSON, formula-proof CSV cells, names and paths that stay inside their root,
long ids, a full disk, and stale-temporary cleanup that spares live writers."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from umbif import utils
from umbif.utils import (
    atomic_write,
    check_component,
    csv_cell,
    csv_safe,
    csv_unescape,
    inside,
    json_text,
    remove_stale_temps,
    safe_name,
    write_json,
)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_refuses_nan_and_infinity_and_writes_nothing(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(tmp_path / "x.json", {"auc": bad})
    assert not (tmp_path / "x.json").exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError):
        json_text([1.0, bad])


def test_json_round_trips(tmp_path: Path) -> None:
    write_json(tmp_path / "x.json", {"a": [1, 2.5, None, "t"]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2.5, None, "t"]}


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_are_neutralised_and_read_back(text: str) -> None:
    assert csv_cell(text) == "'" + text
    assert csv_unescape(csv_cell(text)) == text


@pytest.mark.parametrize("value", ["plain", "a=b", "", "'quoted", -0.5, 3, None])
def test_other_cells_are_left_alone(value: object) -> None:
    assert csv_cell(value) == value
    assert csv_unescape(value) == value


def test_csv_safe_touches_text_columns_only() -> None:
    frame = pd.DataFrame({"exam_id": ["=cmd|' /C calc'!A0", "ok"], "score": [-0.25, 0.5]})
    safe = csv_safe(frame)
    assert list(safe["exam_id"]) == ["'=cmd|' /C calc'!A0", "ok"]
    assert list(safe["score"]) == [-0.25, 0.5]
    assert frame["exam_id"].iloc[0].startswith("=")  # the input is not modified


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", ".hidden", "x" * 97, "a\\b", "nul\0", "/abs"])
def test_unsafe_components_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a safe name"):
        check_component(name, "task name")


@pytest.mark.parametrize("name", ["idh", "codeletion_1p19q", "step_000010", "a.b-c"])
def test_safe_components_pass(name: str) -> None:
    assert check_component(name) == name


def test_inside_refuses_escapes_and_links_out(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, root / "a" / "b.png") == (root / "a" / "b.png").resolve()
    with pytest.raises(ValueError, match="leads outside"):
        inside(root, root / ".." / "patients.csv")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="leads outside"):
        inside(root, root / "link" / "x")


def test_long_ids_are_shortened_with_a_hash_and_stay_distinct() -> None:
    long_a, long_b = "p" * 300 + "a", "p" * 300 + "b"
    names = {safe_name(long_a), safe_name(long_b)}
    assert len(names) == 2 and all(len(n) <= utils.MAX_NAME for n in names)
    assert safe_name("E-0001") == "E-0001"  # short safe ids stay readable
    assert len(safe_name("x" * utils.MAX_NAME)) == utils.MAX_NAME


def test_a_full_disk_is_one_clear_error_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kept.json").write_text("{}")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", full)
    with pytest.raises(OSError, match=f"no space left to write in {tmp_path}"):
        write_json(tmp_path / "new.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]  # nothing half-written, old kept


def test_stale_temp_cleanup_spares_live_writers(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    with atomic_write(target, "w") as handle:  # a live writer: this process
        handle.write("{}")
        live = next(tmp_path.glob(".index.json.*.tmp"))
        remove_stale_temps(target)
        assert live.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = utils._writer_tag().split("~")[0]
    dead_file = tmp_path / f".index.json.{host}~{int(dead.stdout)}.abc.tmp"
    other_host_recent = tmp_path / ".index.json.elsewhere~1.abc.tmp"
    other_host_old = tmp_path / ".index.json.faraway~1.abc.tmp"
    for path in (dead_file, other_host_recent, other_host_old):
        path.write_text("partial")
    old = time.time() - utils.STALE_TEMP_S - 60
    os.utime(other_host_old, (old, old))
    remove_stale_temps(target)
    assert not dead_file.exists() and not other_host_old.exists()
    assert other_host_recent.exists()  # maybe a writer on another node of a shared file system
