"""`umbif report`: the evaluation report of a run (HTML, Markdown, JSON and plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from umbif.cli import _fail, app, out


@app.command("report")
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(help="Run folder of `umbif evaluate` (the folder holding metrics.json).", metavar="RUN_DIR"),
    ],
) -> None:
    """Write the evaluation report of a run into RUN_DIR/report/ and print the files written.

    `report.html` is one self-contained page (styles and plots inside it, nothing fetched from the
    network) that opens offline in any browser: main tables per scheme (k-fold, leave-one-site-out)
    with accuracy, sensitivity, specificity and AUC with bootstrap confidence intervals, the
    published reference figures beside them (clearly apart), ROC and reliability plots, per-site
    results, DeLong comparisons, secondary metrics, wall times, and the run's configuration.
    `report.md` holds the same in Markdown, `report.json` the numbers, and the plots are also PNG
    files. Rerunning overwrites the report; metrics.json is only read.
    """
    from umbif.eval.report import write_report

    if run_dir.is_file() and run_dir.name == "metrics.json":
        run_dir = run_dir.parent
    try:
        paths = write_report(run_dir)
    except (OSError, ValueError) as err:  # missing or bad metrics.json, unwritable folder
        _fail(str(err))
    for path in paths.values():
        out.print(escape(str(path)), highlight=False)
