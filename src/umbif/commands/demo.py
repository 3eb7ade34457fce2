"""`umbif demo`: the whole job (synth, preprocess, pretrain, benchmark) on a synthetic cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from umbif.commands.common import fail, out, print_results, progress_bar

OutOption = Annotated[Path, typer.Option("--out", help="Folder for everything the demo makes.")]
QuickOption = Annotated[bool, typer.Option("--quick", help="Smallest run: a smoke test (about a minute).")]
FullOption = Annotated[bool, typer.Option("--full", help="A larger run, meant for a GPU.")]
WorkersOption = Annotated[int, typer.Option(help="Processes for generating and preprocessing.")]
ThreadsOption = Annotated[
    int, typer.Option(help="Torch threads, pinned and recorded in OUT/demo.json: the same table needs the same count.")
]


def demo(
    out_dir: OutOption = Path("work/demo"),
    quick: QuickOption = False,
    full: FullOption = False,
    workers: WorkersOption = 2,
    threads: ThreadsOption = 2,
) -> None:
    """The main job in one command, on the embedded synthetic cohort.

    Generates a synthetic multi-site glioma cohort, preprocesses it, pretrains UMBIF (hybrid) and
    its ablations plus the SSL-ImageNet and SSL-Cerebral baselines at a small size, adapts and
    evaluates every method (UMBIF probe and fine-tune, radiomics + classical ML, a 3D CNN from
    scratch, and the untrained-architecture control `umbif-random-probe`) on the same patient-level
    folds, and writes OUT/benchmark/report/report.html. About 9 minutes on 2 CPU cores; rerunning
    reuses every finished stage.
    """
    from umbif.demo import profile, run_demo

    if quick and full:
        fail("choose --quick or --full, not both")
    settings = profile("quick" if quick else "full" if full else "default", workers=workers, threads=threads)
    try:
        with progress_bar("demo") as bar:
            document = run_demo(out_dir, settings, on_stage=bar.stage, on_progress=bar.update)
    except (ValueError, FileNotFoundError, KeyError, ImportError, RuntimeError) as err:
        fail(str(err))
    print_results(document)
    seconds = sum(entry["seconds"] for entry in document["stages"].values())
    out.print(
        f"[green]done[/] in {seconds / 60:.1f} min of stage time: "
        f"{escape(str(out_dir / 'benchmark' / 'report' / 'report.html'))}",
        highlight=False,
    )
