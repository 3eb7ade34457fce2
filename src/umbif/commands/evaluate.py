"""`umbif evaluate` (one encoder), `umbif benchmark` (many methods side by side) and `umbif report`:
cross-validation on patient-level folds, metrics.json and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from umbif.commands.common import (
    CacheOption,
    EncoderOption,
    ManifestArgument,
    TasksOption,
    done,
    fail,
    note,
    out,
    parse_tasks,
    print_results,
    progress_bar,
    read_manifest,
)

if TYPE_CHECKING:
    from umbif.adapt.finetune import FinetuneConfig

RunOption = Annotated[Path, typer.Option("--out", help="Run folder: splits, predictions, metrics.json, report/.")]
FoldsOption = Annotated[int, typer.Option(help="k of the patient-level stratified k-fold.")]
RepeatsOption = Annotated[int, typer.Option(help="Repeats of the k-fold with other shuffles.")]
LosoOption = Annotated[bool, typer.Option(help="Also leave-one-site-out.")]
BootstrapOption = Annotated[int, typer.Option(help="Patient-level bootstrap replicates for the 95% CIs.")]
PermutationsOption = Annotated[
    int, typer.Option(help="Label shuffles (between patients) for the permutation p-value of each probe; 0: off.")
]
ReadoutOption = Annotated[
    str,
    typer.Option(
        help="What a frozen encoder hands the probe: lesion (its tokens pooled in the tumour core and oedema of "
        "the segmentation, plus the CLS token; exams without a segmentation use the mean of all tokens) or cls."
    ),
]
AdaptationOption = Annotated[
    list[str] | None, typer.Option(help="probe (default; frozen encoder) and/or finetune. Repeat for both.")
]
SplitsOption = Annotated[
    Path | None, typer.Option(help="Reuse this splits.json (e.g. another run's) to compare on the same folds.")
]
FinetuneConfigOption = Annotated[
    Path | None, typer.Option(help="YAML with fine-tuning settings (see configs/finetune.yaml).")
]
MethodOption = Annotated[
    list[str],
    typer.Option(
        help="Method to run (repeat the option): `<encoder>-probe`, `<encoder>-finetune` for each --encoder, "
        "their untrained-architecture controls `<encoder>-random-probe`, `<encoder>-random-finetune` (the same "
        "architecture with random weights, adapted the same way), radiomics-lr, radiomics-svm, radiomics-rf, "
        "cnn-resnet18, cnn-densenet121."
    ),
]
EncodersOption = Annotated[
    list[str] | None,
    typer.Option(help="NAME=DIR of an exported encoder (repeat), e.g. umbif=models/tiny ssl-imagenet=models/in."),
]
ReferenceOption = Annotated[str, typer.Option(help="Method every other is compared with (DeLong).")]


def evaluate(
    manifest: ManifestArgument,
    cache: CacheOption,
    encoder: EncoderOption,
    out_dir: RunOption,
    method: AdaptationOption = None,
    tasks: TasksOption = None,
    folds: FoldsOption = 5,
    repeats: RepeatsOption = 1,
    loso: LosoOption = True,
    splits: SplitsOption = None,
    bootstrap: BootstrapOption = 1000,
    seed: Annotated[int, typer.Option(help="Seeds folds, inner folds and bootstrap.")] = 0,
    finetune_config: FinetuneConfigOption = None,
    permutations: PermutationsOption = 200,
    readout: ReadoutOption = "lesion",
) -> None:
    """Cross-validate the encoder on the glioma tasks and write metrics and an HTML report.

    Splits are made once at patient level (stratified k-fold and leave-one-site-out) and saved
    in OUT/splits.json; every method is scored on the same folds. Decision thresholds come from
    each fold's training data. Metrics: accuracy, sensitivity, specificity, ROC-AUC (with
    patient-level bootstrap 95% CIs), balanced accuracy, PPV/NPV, Brier score; DeLong tests
    against the linear probe. A rerun continues where the last one stopped (finished folds are
    kept). Open OUT/report/report.html when it is done.
    """
    settings = {"tasks": parse_tasks(tasks), "folds": folds, "repeats": repeats, "loso": loso, "seed": seed}
    settings |= {"permutations": permutations, "readout": readout}
    document = _cross_validate(
        "evaluate",
        manifest,
        cache,
        out_dir,
        _umbif_methods(method),
        {"umbif": encoder},
        {**settings, "n_bootstrap": bootstrap},
        finetune_config=_finetune_config(finetune_config),
        splits_path=splits,
        reference_method="umbif-probe",
    )
    for text in document["cohort"].get("left_out", [])[:10]:
        note(text)
    print_results(document)
    done(str(out_dir / "report" / "report.html"))


def benchmark(
    manifest: ManifestArgument,
    cache: CacheOption,
    out_dir: RunOption,
    method: MethodOption,
    encoder: EncodersOption = None,
    tasks: TasksOption = None,
    folds: FoldsOption = 5,
    repeats: RepeatsOption = 1,
    loso: LosoOption = True,
    splits: Annotated[Path | None, typer.Option(help="Reuse this splits.json (e.g. another run's).")] = None,
    bootstrap: BootstrapOption = 1000,
    seed: Annotated[int, typer.Option(help="Seeds folds, inner folds, training and bootstrap.")] = 0,
    reference: ReferenceOption = "umbif-probe",
    permutations: PermutationsOption = 200,
    readout: ReadoutOption = "lesion",
) -> None:
    """Cross-validate many methods on the same patient-level folds and report them side by side.

    Each method is resumable: a finished method is not recomputed, an interrupted one continues
    at its next fold. The report (OUT/report/report.html) has every method x task with CIs, DeLong
    tests against --reference, the oracle AUC on synthetic cohorts and each method's wall time.
    """
    settings = {"tasks": parse_tasks(tasks), "folds": folds, "repeats": repeats, "loso": loso, "seed": seed}
    settings |= {"permutations": permutations, "readout": readout}
    document = _cross_validate(
        "benchmark",
        manifest,
        cache,
        out_dir,
        method,
        _encoders(encoder),
        {**settings, "n_bootstrap": bootstrap},
        splits_path=splits,
        reference_method=reference,
    )
    print_results(document)
    done(str(out_dir / "report" / "report.html"))


def _cross_validate(
    name: str,
    manifest: Path,
    cache: Path,
    out_dir: Path,
    methods: list[str],
    encoders: dict[str, Path],
    settings: dict[str, Any],
    **options: Any,
) -> dict[str, Any]:
    """:func:`umbif.eval.methods.benchmark` with the evaluation ``settings`` and a progress bar; returns the
    metrics document. Bad input (options, manifest, cache, encoders, splits) ends the command."""
    from umbif.eval.evaluate import EvaluateConfig
    from umbif.eval.methods import benchmark as run

    table = read_manifest(manifest).table
    try:
        config = EvaluateConfig(**settings)
        with progress_bar(name) as bar:
            return run(
                table,
                cache,
                out_dir,
                methods,
                encoders,
                config,
                manifest_path=manifest,
                on_stage=bar.stage,
                on_progress=bar.update,
                **options,
            )
    except (ValueError, FileNotFoundError, KeyError, ImportError) as err:
        fail(str(err))


def _umbif_methods(adaptations: list[str] | None) -> list[str]:
    """``--method probe|finetune`` of `umbif evaluate` as method names of the encoder called umbif."""
    from umbif.eval.methods import ADAPTATIONS

    chosen = adaptations or ["probe"]
    for adaptation in chosen:
        if adaptation not in ADAPTATIONS:
            fail(f"unknown --method {adaptation!r}; choose {' or '.join(ADAPTATIONS)} (repeat the option for both)")
    return [f"umbif-{a}" for a in chosen]


def _encoders(items: list[str] | None) -> dict[str, Path]:
    """``--encoder NAME=DIR`` options as a name -> folder mapping."""
    encoders = {}
    for item in items or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            fail(f"--encoder takes NAME=DIR (e.g. umbif=models/tiny), got {item!r}")
        encoders[name.strip()] = Path(folder)
    return encoders


def _finetune_config(path: Path | None) -> FinetuneConfig | None:
    """The settings of the ``*-finetune`` methods, from ``--finetune-config`` (default: the library's)."""
    if path is None:
        return None
    from umbif.adapt.finetune import FinetuneConfig

    try:
        return FinetuneConfig.from_options(path)
    except (ValueError, FileNotFoundError) as err:
        fail(f"bad settings: {err}")


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
        fail(str(err))
    for path in paths.values():
        out.print(escape(str(path)), highlight=False)
