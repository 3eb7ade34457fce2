"""`umbif benchmark` (all methods side by side) and `umbif demo` (the whole job on synthetic data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from umbif.cli import _fail, _read_manifest, app, console, out
from umbif.commands.adapt import CacheOption, ManifestArgument, TasksOption, _print_results, _progress, _tasks


def _encoders(items: list[str] | None) -> dict[str, Path]:
    encoders = {}
    for item in items or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            _fail(f"--encoder takes NAME=DIR (e.g. umbif=models/tiny), got {item!r}")
        encoders[name.strip()] = Path(folder)
    return encoders


@app.command("benchmark")
def benchmark(
    manifest: ManifestArgument,
    cache: CacheOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: splits, predictions, metrics.json, report/.")],
    method: Annotated[
        list[str],
        typer.Option(
            help="Method to run (repeat the option): <encoder>-probe, <encoder>-finetune for each --encoder, "
            "radiomics-lr, radiomics-svm, radiomics-rf, cnn-resnet18, cnn-densenet121."
        ),
    ],
    encoder: Annotated[
        list[str] | None,
        typer.Option(help="NAME=DIR of an exported encoder (repeat), e.g. umbif=models/tiny ssl-imagenet=models/in."),
    ] = None,
    tasks: TasksOption = None,
    folds: Annotated[int, typer.Option(help="k of the patient-level stratified k-fold.")] = 5,
    repeats: Annotated[int, typer.Option(help="Repeats of the k-fold with other shuffles.")] = 1,
    loso: Annotated[bool, typer.Option(help="Also leave-one-site-out.")] = True,
    splits: Annotated[Path | None, typer.Option(help="Reuse this splits.json (e.g. another run's).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Patient-level bootstrap replicates for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seeds folds, inner folds, training and bootstrap.")] = 0,
    reference: Annotated[str, typer.Option(help="Method every other is compared with (DeLong).")] = "umbif-probe",
) -> None:
    """Cross-validate many methods on the same patient-level folds and report them side by side.

    Each method is resumable: a finished method is not recomputed, an interrupted one continues
    at its next fold. The report (OUT/report/report.html) has every method x task with CIs, DeLong
    tests against --reference, the oracle AUC on synthetic cohorts and each method's wall time.
    """
    from umbif.benchmark import benchmark as run
    from umbif.eval.evaluate import EvaluateConfig

    table = _read_manifest(manifest, None).table
    try:
        config = EvaluateConfig(
            tasks=_tasks(tasks), folds=folds, repeats=repeats, loso=loso, seed=seed, n_bootstrap=bootstrap
        )
        with _progress("benchmark") as progress:
            bar = progress.add_task("", total=None)
            document = run(
                table,
                cache,
                out_dir,
                method,
                _encoders(encoder),
                config,
                splits_path=splits,
                manifest_path=manifest,
                reference_method=reference,
                on_stage=lambda text: console.print(f"[cyan]{escape(text)}[/]", highlight=False),
                on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
            )
    except (ValueError, FileNotFoundError, KeyError, ImportError) as err:
        _fail(str(err))
    _print_results(document)
    out.print(f"[green]done[/]: {escape(str(out_dir / 'report' / 'report.html'))}", highlight=False)


@app.command("demo")
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for everything the demo makes.")] = Path("work/demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Smallest run: a smoke test (about a minute).")] = False,
    full: Annotated[bool, typer.Option("--full", help="A larger run, meant for a GPU.")] = False,
    workers: Annotated[int, typer.Option(help="Processes for generating and preprocessing.")] = 2,
) -> None:
    """The main job in one command, on the embedded synthetic cohort.

    Generates a synthetic multi-site glioma cohort, preprocesses it, pretrains UMBIF (hybrid) and
    its ablations plus the SSL-ImageNet and SSL-Cerebral baselines at a small size, adapts and
    evaluates every method (UMBIF probe and fine-tune, radiomics + classical ML, a 3D CNN from
    scratch) on the same patient-level folds, and writes OUT/benchmark/report/report.html. About 9
    minutes on 2 CPU cores; rerunning reuses every finished stage.
    """
    from umbif.demo import profile, run_demo

    if quick and full:
        _fail("choose --quick or --full, not both")
    settings = profile("quick" if quick else "full" if full else "default", workers=workers)
    try:
        with _progress("demo") as progress:
            bar = progress.add_task("", total=None)

            def stage(text: str) -> None:
                console.print(f"[cyan]{escape(text)}[/]", highlight=False)
                progress.update(bar, completed=0, total=None)

            document = run_demo(
                out_dir,
                settings,
                on_stage=stage,
                on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
            )
    except (ValueError, FileNotFoundError, KeyError, ImportError, RuntimeError) as err:
        _fail(str(err))
    _print_results(document)
    seconds = sum(entry["seconds"] for entry in document["stages"].values())
    out.print(
        f"[green]done[/] in {seconds / 60:.1f} min of stage time: "
        f"{escape(str(out_dir / 'benchmark' / 'report' / 'report.html'))}",
        highlight=False,
    )
