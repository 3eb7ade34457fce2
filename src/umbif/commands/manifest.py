"""`umbif manifest validate|summary`: check and describe a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from umbif.commands.common import RootOption, fail, out, read_manifest

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

app = typer.Typer(help="Check and describe a manifest (CSV or Parquet).", no_args_is_help=True)

ManifestFileArgument = Annotated[Path, typer.Argument(help="Manifest file (.csv or .parquet).")]


@app.command("validate")
def manifest_validate(
    manifest: ManifestFileArgument,
    root: RootOption = None,
    no_files: Annotated[bool, typer.Option("--no-files", help="Skip the check that every file exists.")] = False,
) -> None:
    """Report every problem of a manifest with its row and column; exit 1 if any is an error.

    Checks: required columns filled, duplicate exam_id, exams without a sequence, paths leaving
    the manifest's root, missing files, label values outside their set, non-numeric timepoints.
    """
    from umbif.data.manifest import errors, validate

    table = read_manifest(manifest, root)
    problems = validate(table, check_files=not no_files)
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        out.print(f"[{style}]{escape(str(problem))}[/]", highlight=False)
    n_errors = len(errors(problems))
    summary = f"{len(table)} exams, {n_errors} errors, {len(problems) - n_errors} warnings"
    if n_errors:
        fail(f"{manifest}: {summary}; fix the rows above and validate again")
    out.print(f"[green]ok[/]: {escape(str(manifest))}: {summary}", highlight=False)


@app.command("summary")
def manifest_summary(manifest: ManifestFileArgument, root: RootOption = None) -> None:
    """Print exams and patients per site, sequence availability and label balance as tables."""
    from umbif.data.manifest import summarize

    tables = summarize(read_manifest(manifest, root))
    out.print(_rich_table(tables["sites"].reset_index(), "Exams per site and sequence availability"))
    out.print(_rich_table(tables["labels"], "Label balance (positive / negative class)"))


def _rich_table(frame: pd.DataFrame, title: str) -> Table:
    import pandas as pd
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        table.add_column(str(column), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    return table
