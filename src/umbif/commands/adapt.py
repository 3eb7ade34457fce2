"""`umbif embed`, `umbif probe` and `umbif evaluate`: frozen embeddings, linear probes, cross-validation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from umbif.cli import _fail, _read_manifest, app, console, out

ManifestArgument = Annotated[Path, typer.Argument(help="Manifest of the exams (.csv or .parquet).")]
CacheOption = Annotated[Path, typer.Option(help="Exam cache written by `umbif preprocess` from that manifest.")]
EncoderOption = Annotated[Path, typer.Option(help="Encoder folder written by `umbif export` (safetensors).")]
TasksOption = Annotated[
    str | None,
    typer.Option(help="Comma-separated tasks (default: all of outcome, idh, mgmt, codeletion_1p19q)."),
]


def _progress(name: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console)


def _tasks(text: str | None) -> tuple[str, ...]:
    from umbif.eval.tasks import TASKS, check_task

    if not text:
        return TASKS
    try:
        return tuple(check_task(t.strip()) for t in text.split(",") if t.strip())
    except ValueError as err:
        _fail(str(err))
    return ()


def _cached(cache: Path) -> set[str]:
    from umbif.data.cache import read_index

    try:
        return {e["exam_id"] for e in read_index(cache)["exams"]}
    except FileNotFoundError as err:
        _fail(f"{err}; run `umbif preprocess MANIFEST --out {cache}` first")
    return set()


@app.command("embed")
def embed(
    manifest: ManifestArgument,
    cache: CacheOption,
    encoder: EncoderOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for embeddings/<encoder>-<plan>.npz (+ .json).")],
    batch_size: Annotated[int, typer.Option(help="Exams per forward pass.")] = 4,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
) -> None:
    """Embed every cached exam of the manifest with a frozen encoder (its CLS token).

    The embeddings are stored keyed by exam and by the fingerprints of the encoder weights and the
    preprocessing plan; a rerun embeds only exams not stored yet. Read them with
    `numpy.load(OUT/embeddings/KEY.npz)` (arrays `exam_ids` and `values`).
    """
    from umbif.adapt.embed import embed_exams

    table = _read_manifest(manifest, None).table
    cached = _cached(cache)
    ids = [e for e in table["exam_id"] if e in cached]
    if len(ids) < len(table):
        console.print(f"[yellow]note[/]: {len(table) - len(ids)} exams of the manifest are not in the cache")
    try:
        with _progress("embed") as progress:
            task = progress.add_task("", total=len(ids))
            result = embed_exams(
                encoder,
                cache,
                ids,
                store_dir=out_dir,
                batch_size=batch_size,
                device=device,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(str(err))
    path = out_dir / "embeddings" / f"{result.key}.npz"
    out.print(f"[green]done[/]: {len(ids)} exams, {result.values.shape[1]} features -> {escape(str(path))}")


@app.command("probe")
def probe(
    manifest: ManifestArgument,
    cache: CacheOption,
    encoder: EncoderOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Classifier folder for `umbif predict`.")],
    tasks: TasksOption = None,
    seed: Annotated[int, typer.Option(help="Seeds the inner folds.")] = 0,
    min_per_class: Annotated[int, typer.Option(help="Patients needed in each class to train a task.")] = 4,
) -> None:
    """Train linear probes on all labelled exams and write a classifier for `umbif predict`.

    Per task: logistic regression on the frozen encoder's embeddings (outcome: baseline and
    follow-up embeddings combined), regularisation and decision threshold (Youden) chosen by
    patient-grouped inner cross-validation. To measure how well this works, use `umbif evaluate`.
    """
    from umbif.adapt.probe import fit_classifier

    table = _read_manifest(manifest, None).table
    try:
        with _progress("embed") as progress:
            task = progress.add_task("", total=None)
            report = fit_classifier(
                table,
                cache,
                encoder,
                out_dir,
                tasks=_tasks(tasks),
                seed=seed,
                min_per_class=min_per_class,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(str(err))
    for note in report["notes"]:
        console.print(f"[yellow]note[/]: {escape(note)}", highlight=False)
    for name, info in report["tasks"].items():
        out.print(
            f"  {name}: {info['n_train']} samples, C {info['C']:.3g}, inner-CV AUC {info['inner_auc']:.3f}, "
            f"threshold {info['threshold']:.3f}",
            highlight=False,
        )
    out.print(f"[green]done[/]: classifier -> {escape(str(out_dir))}; use it with `umbif predict --model`")


@app.command("evaluate")
def evaluate(
    manifest: ManifestArgument,
    cache: CacheOption,
    encoder: EncoderOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: splits, predictions, metrics.json, report/.")],
    method: Annotated[
        list[str] | None, typer.Option(help="probe (default; frozen encoder) and/or finetune. Repeat for both.")
    ] = None,
    tasks: TasksOption = None,
    folds: Annotated[int, typer.Option(help="k of the patient-level stratified k-fold.")] = 5,
    repeats: Annotated[int, typer.Option(help="Repeats of the k-fold with other shuffles.")] = 1,
    loso: Annotated[bool, typer.Option(help="Also leave-one-site-out.")] = True,
    splits: Annotated[
        Path | None, typer.Option(help="Reuse this splits.json (e.g. another run's) to compare on the same folds.")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Patient-level bootstrap replicates for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seeds folds, inner folds and bootstrap.")] = 0,
    finetune_config: Annotated[
        Path | None, typer.Option(help="YAML with fine-tuning settings (see configs/finetune.yaml).")
    ] = None,
) -> None:
    """Cross-validate the encoder on the glioma tasks and write metrics and an HTML report.

    Splits are made once at patient level (stratified k-fold and leave-one-site-out) and saved
    in OUT/splits.json; every method is scored on the same folds. Decision thresholds come from
    each fold's training data. Metrics: accuracy, sensitivity, specificity, ROC-AUC (with
    patient-level bootstrap 95% CIs), balanced accuracy, PPV/NPV, Brier score; DeLong tests
    against the linear probe. A rerun continues where the last one stopped (finished folds are
    kept). Open OUT/report/report.html when it is done.
    """
    from umbif.eval.evaluate import EvaluateConfig
    from umbif.eval.evaluate import evaluate as run

    table = _read_manifest(manifest, None).table
    try:
        config = EvaluateConfig(
            tasks=_tasks(tasks), folds=folds, repeats=repeats, loso=loso, seed=seed, n_bootstrap=bootstrap
        )
        tuning = None
        if finetune_config is not None:
            from umbif.train.finetune import FinetuneConfig

            tuning = FinetuneConfig.from_yaml(finetune_config)
        with _progress("evaluate") as progress:
            task = progress.add_task("", total=None)
            document = run(
                table,
                cache,
                encoder,
                out_dir,
                config,
                methods=tuple(method or ("probe",)),
                splits_path=splits,
                finetune_config=tuning,
                manifest_path=manifest,
                on_stage=lambda text: console.print(f"[cyan]{escape(text)}[/]", highlight=False),
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(str(err))
    for note in document["cohort"].get("left_out", [])[:10]:
        console.print(f"[yellow]note[/]: {escape(note)}", highlight=False)
    _print_results(document)
    out.print(f"[green]done[/]: {escape(str(out_dir / 'report' / 'report.html'))}", highlight=False)


def _print_results(document: dict) -> None:
    from rich.table import Table

    table = Table(title="accuracy / sensitivity / specificity / AUC (95% CI)")
    for column in ("method", "task", "scheme", "n", "accuracy", "sensitivity", "specificity", "AUC"):
        table.add_column(column, no_wrap=True)

    def cell(metric: dict) -> str:
        if metric["value"] is None:
            return "—"
        ci = f" ({metric['low']:.2f}–{metric['high']:.2f})" if metric["low"] is not None else ""
        return f"{metric['value']:.3f}{ci}"

    for row in document["results"]:
        m = row["metrics"]
        table.add_row(
            escape(row["method"]), row["task"], row["scheme"], str(row["n_samples"]),
            *(cell(m[k]) for k in ("accuracy", "sensitivity", "specificity", "auc")),
        )  # fmt: skip
    out.print(table)
