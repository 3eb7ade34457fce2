"""What every command module shares: the two consoles, `fail`, reading a manifest or a cache, progress
bars, the options several commands take, and printing results. Only light modules are imported at the
top (typer, rich): `umbif --help` must not wait for torch or pandas."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    import pandas as pd
    from rich.progress import Progress, TaskID

    from umbif.data.cache import Cache
    from umbif.data.manifest import Manifest
    from umbif.data.sequences import AliasTable

# Logs and pipes get 120 columns (rich would wrap tables at 80); terminals and $COLUMNS keep theirs.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
console = Console(stderr=True, width=_WIDTH, soft_wrap=True)  # messages stay one line (grep-able logs)
out = Console(width=_WIDTH, soft_wrap=True)

# ----------------------------------------------------------------------------- options several commands take
ManifestArgument = Annotated[Path, typer.Argument(help="Manifest of the exams (.csv or .parquet).")]
CacheOption = Annotated[Path, typer.Option(help="Exam cache written by `umbif preprocess` from that manifest.")]
EncoderOption = Annotated[Path, typer.Option(help="Encoder folder written by `umbif export` (safetensors).")]
RootOption = Annotated[
    Path | None,
    typer.Option(help="Folder the manifest's paths are relative to (default: the manifest's own folder)."),
]
TasksOption = Annotated[
    str | None,
    typer.Option(help="Comma-separated tasks (default: all of outcome, idh, mgmt, codeletion_1p19q)."),
]
AliasOption = Annotated[
    Path | None,
    typer.Option("--aliases", help="YAML with extra sequence names and names to ignore (see docs/ingest.md)."),
]
SeedOption = Annotated[int | None, typer.Option(help="Random seed.")]


# ----------------------------------------------------------------------------- messages
def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and end the command with exit code ``code``."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def note(message: str) -> None:
    """Print ``note: message`` on stderr (something left out that the user should know about)."""
    console.print(f"[yellow]note[/]: {escape(message)}", highlight=False)


def os_message(err: OSError) -> str:
    """An ``OSError`` as one line: umbif's own messages (a full disk names the folder) as they are, others with
    the file they concern (``cannot write out/manifest.csv: Permission denied``)."""
    if err.filename is None:
        return err.strerror or str(err)
    target = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
    return f"{target}: {err.strerror or err}"


def done(message: str) -> None:
    """Print ``done: message`` on stdout."""
    out.print(f"[green]done[/]: {escape(message)}", highlight=False)


# ----------------------------------------------------------------------------- inputs
def read_manifest(path: Path, root: Path | None = None) -> Manifest:
    """The manifest at ``path``; a missing or malformed file ends the command with the reader's message."""
    from umbif.data.manifest import Manifest

    try:
        return Manifest.read(path, root)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))


def open_cache(path: Path) -> Cache:
    """The exam cache at ``path``; a folder that is not one, or a damaged index, ends the command (saying
    to run preprocess)."""
    from umbif.data.cache import Cache

    try:
        return Cache(path)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))


def cached_exams(path: Path, table: pd.DataFrame) -> tuple[Cache, list[str]]:
    """The cache at ``path`` and the manifest's exams it holds; the others are named in one note."""
    cache = open_cache(path)
    ids = cache.select(table["exam_id"])
    if len(ids) < len(table):
        note(f"{len(table) - len(ids)} exams of the manifest are not in the cache and are left out")
    return cache, ids


def parse_tasks(text: str | None) -> tuple[str, ...]:
    """The tasks of a comma-separated ``--tasks`` option, each checked (default: every task)."""
    from umbif.data.samples import TASKS, check_task

    if not text:
        return TASKS
    try:
        return tuple(check_task(t.strip()) for t in text.split(",") if t.strip())
    except ValueError as err:
        fail(str(err))


def alias_table(path: Path | None) -> AliasTable:
    """The built-in sequence alias table, extended by the ``--aliases`` YAML when one is given."""
    from umbif.config import AliasConfig
    from umbif.data.sequences import alias_table as build

    try:
        config = AliasConfig.from_yaml(path) if path else AliasConfig()
        return build(config.aliases, config.ignore)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))


# ----------------------------------------------------------------------------- progress
class Bar:
    """A progress bar on stderr whose methods are the callbacks of the library functions."""

    def __init__(self, progress: Progress, total: int | None = None, staged: bool = False) -> None:
        self._progress = progress
        self._rows: dict[str, TaskID] = {} if staged else {"": progress.add_task("", total=total)}

    def _row(self, name: str) -> TaskID:
        if name not in self._rows:
            self._rows[name] = self._progress.add_task(name, total=None)
        return self._rows[name]

    def update(self, done: int, total: int | None = None, text: str | None = None) -> None:
        """``on_progress(done, total)``; ``text`` replaces the words beside the bar."""
        description = {} if text is None else {"description": text}
        self._progress.update(self._row(""), completed=done, total=total, **description)

    def update_stage(self, stage: str, done: int, total: int) -> None:
        """``on_progress(stage, done, total)``: one bar per stage, each kept on screen."""
        self._progress.update(self._row(stage), completed=done, total=total)

    def stage(self, text: str) -> None:
        """``on_stage(text)``: print the stage and restart the bar for it."""
        console.print(f"[cyan]{escape(text)}[/]", highlight=False)
        if "" in self._rows:  # a fresh bar: the next update gives the stage's total, if it has one
            self._progress.remove_task(self._rows.pop(""))


@contextmanager
def progress_bar(
    name: str, total: int | None = None, *, staged: bool = False, elapsed: bool = False, disable: bool = False
) -> Iterator[Bar]:
    """Show a progress bar named ``name`` while the block runs.

    Args:
        name: the word before the bar (usually the command).
        total: the bar's length until the first update says otherwise (None: unknown).
        staged: the bars come from :meth:`Bar.update_stage` only (no bar until the first stage).
        elapsed: show the time spent instead of the time left.
        disable: show nothing (e.g. on every rank but the first under torchrun).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    clock = TimeElapsedColumn() if elapsed else TimeRemainingColumn()
    columns = (TextColumn(name), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"), clock)
    with Progress(*columns, console=console, disable=disable) as progress:
        yield Bar(progress, total, staged)


# ----------------------------------------------------------------------------- results
def print_results(document: dict[str, Any]) -> None:
    """The results of a metrics document (``umbif evaluate|benchmark|demo``) as one table on stdout."""
    from rich.table import Table

    table = Table(title="accuracy / sensitivity / specificity / AUC (95% CI)")
    for column in ("method", "task", "scheme", "n", "accuracy", "sensitivity", "specificity", "AUC"):
        table.add_column(column, no_wrap=True)
    for row in document["results"]:
        m = row["metrics"]
        table.add_row(
            escape(row["method"]), row["task"], row["scheme"], str(row["n_samples"]),
            *(_cell(m[k]) for k in ("accuracy", "sensitivity", "specificity", "auc")),
        )  # fmt: skip
    out.print(table)


def _cell(metric: dict[str, Any]) -> str:
    if metric["value"] is None:
        return "—"
    ci = f" ({metric['low']:.2f}–{metric['high']:.2f})" if metric["low"] is not None else ""
    return f"{metric['value']:.3f}{ci}"
