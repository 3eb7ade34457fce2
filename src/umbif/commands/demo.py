"""`umbif demo`: the whole job (synth, preprocess, pretrain, benchmark) on a synthetic cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from umbif.commands.common import fail, out, print_results, progress_bar

OutOption = Annotated[Path, typer.Option("--out", help="Folder for everything the demo makes.")]
QuickOption = Annotated[bool, typer.Option("--quick", help="Smallest run: a smoke test (at most 3 minutes).")]
FullOption = Annotated[bool, typer.Option("--full", help="A larger run, meant for a GPU.")]
WorkersOption = Annotated[int, typer.Option(help="Processes for generating and preprocessing.")]
ThreadsOption = Annotated[
    int, typer.Option(help="Torch threads, pinned and recorded in OUT/demo.json: the same table needs the same count.")
]
SeedOption = Annotated[
    int | None, typer.Option(help="Seed of the cohort, the pretraining and the folds (default 0; wins over the file).")
]
SynthConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--synth-config",
        help="YAML or JSON of synthetic-generator settings laid over the profile's, e.g. "
        "'strength: {idh_enhancement: 0.5}' (keys: configs/synth.yaml, docs/synth.md).",
    ),
]


def demo(
    out_dir: OutOption = Path("work/demo"),
    quick: QuickOption = False,
    full: FullOption = False,
    workers: WorkersOption = 2,
    threads: ThreadsOption = 2,
    seed: SeedOption = None,
    synth_config: SynthConfigOption = None,
) -> None:
    """The main job in one command, on the embedded synthetic cohort.

    Generates a synthetic multi-site glioma cohort, preprocesses it, pretrains UMBIF (hybrid) and
    its ablations plus the SSL-ImageNet and SSL-Cerebral baselines at a small size, adapts and
    evaluates every method (UMBIF probe and fine-tune, radiomics + classical ML, a 3D CNN from
    scratch, and the untrained-architecture control `umbif-random-probe`) on the same patient-level
    folds (default: 160 labelled patients, 5 x 5-fold), and writes OUT/benchmark/report/report.html.
    Seed and generator settings are saved in OUT/demo.json; a rerun reuses every stage whose settings
    did not change (another --seed or --synth-config makes everything again).
    """
    from umbif.demo import profile, run_demo

    if quick and full:
        fail("choose --quick or --full, not both")
    name = "quick" if quick else "full" if full else "default"
    try:
        settings = profile(name, synth_config, workers=workers, threads=threads, seed=seed)
    except (ValueError, FileNotFoundError) as err:
        fail(f"bad settings: {err}")
    try:
        with progress_bar("demo") as bar:
            document = run_demo(out_dir, settings, on_stage=bar.stage, on_progress=bar.update)
    except (ValueError, FileNotFoundError, KeyError, ImportError, RuntimeError) as err:
        fail(str(err))
    print_results(document)
    seconds = sum(entry.get("seconds", 0.0) for entry in document["stages"].values())
    out.print(
        f"[green]done[/] in {seconds / 60:.1f} min of stage time: "
        f"{escape(str(out_dir / 'benchmark' / 'report' / 'report.html'))}",
        highlight=False,
    )
