"""The command line: its structure (modules, imports, command length, a fast --help), help texts,
--version, `manifest validate|summary`, and bad options. (Ingest and preprocess runs are tested with their
library functions and in the end-to-end CLI tests.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import umbif.cli
import umbif.commands
from umbif import __version__
from umbif.cli import COMMANDS, app

ENV = {"COLUMNS": "200"}  # wide enough that Rich does not wrap a problem line


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """``tmp_path/data`` with empty stand-in image files for exams e1 and e2 (validation checks existence only)."""
    for exam in ("e1", "e2"):
        (tmp_path / "data" / exam).mkdir(parents=True)
        for name in ("t1", "flair"):
            (tmp_path / "data" / exam / f"{name}.nii.gz").touch()
    return tmp_path / "data"


def _row(exam: str, **values: str) -> dict[str, str]:
    row = {"exam_id": exam, "patient_id": f"p-{exam}", "site": "siteA", "t1": f"{exam}/t1.nii.gz", "idh": "mutant"}
    return row | values


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], ["Usage: umbif", "ingest", "manifest", "preprocess", "--version"]),
        (["ingest", "--help"], ["Usage: umbif ingest", "folder", "brats"]),
        (["ingest", "folder", "--help"], ["Usage: umbif ingest folder", "plain folder", "--aliases", "--labels"]),
        (["ingest", "brats", "--help"], ["Usage: umbif ingest brats", "BraTS2021_00000", "--site", "--out"]),
        (["manifest", "--help"], ["Usage: umbif manifest", "validate", "summary"]),
        (["manifest", "validate", "--help"], ["row and column", "--no-files", "--root"]),
        (["manifest", "summary", "--help"], ["label balance", "--root"]),
        (["preprocess", "--help"], ["Usage: umbif preprocess", "quarantine", "--shard", "--workers", "--out"]),
        (["cache", "--help"], ["Usage: umbif cache", "info", "show"]),
        (["cache", "info", "--help"], ["Usage: umbif cache info", "--verify"]),
        (["cache", "show", "--help"], ["Usage: umbif cache show", "PNG", "--out"]),
        (["evaluate", "--help"], ["Usage: umbif evaluate", "--method", "--finetune-config", "--splits"]),
        (
            ["benchmark", "--help"],
            ["Usage: umbif benchmark", "<encoder>-random-probe", "cnn-densenet121", "--reference"],
        ),
    ],
)
def test_help(args: list[str], expected: list[str]) -> None:
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.stdout


def test_commands_are_listed_data_path_first() -> None:
    listed = [line.split()[1] for line in _invoke("--help").stdout.splitlines() if line[2:3].isalpha()]
    assert listed[listed.index("ingest") :] == list(COMMANDS)
    assert listed.index("ingest") < listed.index("pretrain") < listed.index("evaluate")


def test_version() -> None:
    result = _invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"umbif {__version__}"


# ------------------------------------------------------------------------------------- manifest validate
def test_validate_bad_manifest(data: Path) -> None:
    rows = [_row("e1", t1="e1/none.nii.gz"), _row("e2", idh="maybe", site=""), _row("e2", t1="", flair="")]
    manifest = _write_manifest(data / "manifest.csv", rows)
    result = _invoke("manifest", "validate", str(manifest))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("error: row 1, t1: file not found: e1/none.nii.gz")
    assert lines[1] == "warning: row 2, site: site is empty; leave-one-site-out will group it as ''"
    assert lines[2].startswith("error: row 2, idh: unknown label 'maybe'")
    assert lines[3] == "error: row 3, exam_id: duplicate exam_id 'e2' (first in row 2)"
    assert lines[4].startswith("error: row 3: exam has no sequence")
    assert len(lines) == 5
    assert "3 exams, 4 errors, 1 warnings; fix the rows above" in result.stderr


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_validate_good_manifest(data: Path, suffix: str) -> None:
    manifest = data / f"manifest{suffix}"
    frame = pd.DataFrame([_row("e1"), _row("e2", flair="e2/flair.nii.gz")])
    if suffix == ".csv":
        frame.to_csv(manifest, index=False)
    else:
        frame.to_parquet(manifest)
    result = _invoke("manifest", "validate", str(manifest))
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout
    assert "2 exams, 0 errors, 0 warnings" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("options", "exit_code"),
    [
        ([], 1),  # paths are relative to the manifest's folder by default: files not found
        (["--root", "{data}"], 0),
        (["--no-files"], 0),  # existence is not checked, and paths do not leave the root
    ],
)
def test_validate_root_and_no_files(data: Path, options: list[str], exit_code: int) -> None:
    manifest = _write_manifest(data.parent / "lists" / "manifest.csv", [_row("e1"), _row("e2")])
    result = _invoke("manifest", "validate", str(manifest), *(o.format(data=data) for o in options))
    assert result.exit_code == exit_code, result.output
    assert ("file not found" in result.stdout) is (exit_code == 1)


def test_validate_missing_manifest(tmp_path: Path) -> None:
    result = _invoke("manifest", "validate", str(tmp_path / "none.csv"))
    assert result.exit_code == 1
    assert "does not exist" in result.stderr


def test_validate_prints_paths_with_brackets(data: Path) -> None:
    manifest = _write_manifest(data / "manifest.csv", [_row("e1", t1="e1/[old]/t1.nii.gz")])
    result = _invoke("manifest", "validate", str(manifest))
    assert result.exit_code == 1
    assert "e1/[old]/t1.nii.gz" in result.stdout


# ------------------------------------------------------------------------------------- manifest summary
def _cells(output: str, first: str) -> list[str]:
    """The cells of the Rich table row whose first cell is ``first``."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no table row starts with {first!r} in:\n{output}")


def test_summary_prints_site_and_label_tables(data: Path) -> None:
    rows = [
        _row("e1", patient_id="p1", site="siteA", flair="e1/flair.nii.gz", mgmt="methylated"),
        _row("e2", patient_id="p1", site="siteA", idh="wildtype"),
        _row("e3", patient_id="p2", site="siteB", t1="", flair="e2/flair.nii.gz", idh=""),
    ]
    result = _invoke("manifest", "summary", str(_write_manifest(data / "manifest.csv", rows)))
    assert result.exit_code == 0, result.output
    assert "Exams per site" in result.stdout and "Label balance" in result.stdout
    # site, exams, patients, t1, t1c, t2, flair
    assert _cells(result.stdout, "siteA") == ["siteA", "2", "1", "2", "0", "0", "1"]
    assert _cells(result.stdout, "siteB") == ["siteB", "1", "1", "0", "0", "0", "1"]
    assert _cells(result.stdout, "total") == ["total", "3", "2", "2", "0", "0", "2"]
    # label, classes, positive, negative, missing, invalid
    assert _cells(result.stdout, "idh") == ["idh", "mutant / wildtype", "1", "1", "1", "0"]
    assert _cells(result.stdout, "mgmt") == ["mgmt", "methylated / unmethylated", "1", "0", "2", "0"]


# ------------------------------------------------------------------------------------------ preprocess
@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ("3/2", "shard '3/2': need 0 <= i < n"),
        ("2/2", "shard '2/2': need 0 <= i < n"),
        ("half", "shard 'half' must look like i/n, e.g. 0/4"),
        ("1/2/3", "shard '1/2/3' must look like i/n"),
    ],
)
def test_preprocess_bad_shard(data: Path, shard: str, message: str) -> None:
    manifest = _write_manifest(data / "manifest.csv", [_row("e1")])
    result = _invoke("preprocess", str(manifest), "--out", str(data.parent / "cache"), "--shard", shard)
    assert result.exit_code == 1
    assert "error: bad settings: " + message in result.stderr
    assert not (data.parent / "cache").exists()  # refused before any work


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "folder", "{tmp}/missing"], "is not a folder"),
        (["ingest", "brats", "{tmp}/missing"], "missing"),
        (["ingest", "folder", "{tmp}/data", "--labels", "{tmp}/none.csv"], "none.csv does not exist"),
        (["ingest", "folder", "{tmp}/data", "--aliases", "{tmp}/aliases.yaml"], "unknown alias target 't9'"),
    ],
)
def test_ingest_bad_input_is_one_clear_error(make_exam, tmp_path: Path, args: list[str], message: str) -> None:
    make_exam("exam1", shape=(8, 8, 8))  # tmp_path/data/exam1: a valid layout, so the bad option is the error
    (tmp_path / "aliases.yaml").write_text("aliases: {t9: [x]}\n")
    result = _invoke(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 1
    assert "error:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.output


def test_evaluate_refuses_an_unknown_method(tmp_path: Path) -> None:
    args = ["--cache", str(tmp_path), "--encoder", str(tmp_path), "--out", str(tmp_path / "run")]
    result = _invoke("evaluate", str(tmp_path / "manifest.csv"), *args, "--method", "magic")
    assert result.exit_code == 1
    assert "unknown --method 'magic'; choose probe or finetune" in result.stderr


# ------------------------------------------------------------------------------------------- structure
COMMANDS_DIR = Path(umbif.commands.__file__).parent
CLI_MODULES = [Path(umbif.cli.__file__), *sorted(COMMANDS_DIR.glob("*.py"))]
MAX_COMMAND_LINES = 50  # def line to last line: options, docstring, parse -> one library call -> print


def _module_name(path: Path) -> str:
    return "umbif.cli" if path.name == "cli.py" else f"umbif.commands.{path.stem}"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, functions included; ``import a.b`` gives ("a.b", [])."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


@pytest.mark.parametrize("path", CLI_MODULES, ids=lambda p: p.name)
def test_command_modules_import_only_common(path: Path) -> None:
    """No import circle back into the app; command modules are independent of each other; nothing private crosses."""
    for module, names in _imports(path):
        assert module != "umbif.cli", f"{path.name} imports umbif.cli"
        commands_module = module.startswith("umbif.commands.") or (module == "umbif.commands" and names)
        if path.name != "cli.py" and commands_module:
            assert module == "umbif.commands.common", f"{path.name} imports {module} {names}"
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{path.name}: from {module} import {private}"


def _registered(typer_app) -> list:
    """Every command callback of a Typer app and its sub-apps."""
    callbacks = [info.callback for info in typer_app.registered_commands]
    for group in typer_app.registered_groups:
        callbacks += _registered(group.typer_instance)
    return callbacks


def _decorated_commands(path: Path) -> list[str]:
    """Functions of the file decorated with ``@<something>.command(...)``."""
    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(
            isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
            for d in node.decorator_list
        )
    ]


def test_every_command_is_short() -> None:
    callbacks = _registered(app)
    assert len(callbacks) == 8 + 2 + 3 + 12  # ingest, manifest, cache sub-commands and the top-level ones
    commands = {(c.__module__, c.__name__) for c in callbacks}
    decorated = {(_module_name(p), name) for p in CLI_MODULES for name in _decorated_commands(p)}
    assert decorated <= commands  # a decorated function that is not registered would be dead code
    too_long = []
    for module, name in sorted(commands):
        assert module.startswith("umbif.commands."), f"{name} is defined in {module}"
        tree = ast.parse((COMMANDS_DIR / f"{module.rsplit('.', 1)[1]}.py").read_text())
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
        if lines > MAX_COMMAND_LINES:
            too_long.append(f"{module}.{name}: {lines} lines")
    assert not too_long


def test_help_does_not_import_torch() -> None:
    code = "import sys, umbif.cli; print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
