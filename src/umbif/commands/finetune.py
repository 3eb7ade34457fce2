"""`umbif finetune`: fine-tune the pretrained encoder on the labelled glioma tasks and write a classifier
folder for `umbif predict` (library: :mod:`umbif.train.finetune`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from umbif.cli import _cached_ids, _fail, _read_manifest, app, console, out


@app.command("finetune")
def finetune(
    manifest: Annotated[Path, typer.Argument(help="Manifest with the labels (.csv or .parquet).")],
    cache: Annotated[Path, typer.Option(help="Exam cache written by `umbif preprocess` from that manifest.")],
    encoder: Annotated[Path, typer.Option(help="Pretrained encoder folder (`umbif export`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Classifier folder to write (for `umbif predict`).")],
    tasks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated tasks among outcome, idh, mgmt, codeletion_1p19q (default: every task with labels)."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML with fine-tuning settings (see configs/finetune.yaml); options win.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = None,
    head: Annotated[
        str | None, typer.Option(help="linear (default; the only head a classifier folder holds), mlp or attention.")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="full (default), partial (the last blocks) or frozen (heads only).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
) -> None:
    """Fine-tune the UMBIF encoder with one head per task and save it as a classifier folder.

    One model learns all chosen tasks at once; a sample counts only for the tasks it has a label for
    (1p/19q exists only for IDH-mutant tumours). `outcome` is scored from the patient's (baseline,
    follow-up) pair. A fifth of the training patients (val_fraction) is held out to stop early and to
    choose each task's decision threshold (Youden J). Writes OUT/encoder.safetensors, config.json,
    heads.safetensors, classifier.json, history.jsonl (loss and AUC per epoch) and provenance.json.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from umbif.config import read_yaml
    from umbif.eval.tasks import TASKS, check_task, labelled_samples
    from umbif.train.finetune import FinetuneConfig, save_finetuned
    from umbif.train.finetune import finetune as run

    try:
        settings = read_yaml(config) if config else {}
        given = {"epochs": epochs, "head": head, "mode": mode, "seed": seed}
        settings.update({k: v for k, v in given.items() if v is not None})
        settings_obj = FinetuneConfig.model_validate(settings)
        chosen = [check_task(t.strip()) for t in tasks.split(",") if t.strip()] if tasks else list(TASKS)
    except (ValueError, FileNotFoundError) as err:
        _fail(f"bad settings: {err}")
    if settings_obj.head != "linear":
        _fail(
            f"head {settings_obj.head!r} cannot be saved: a classifier folder holds only linear heads on the CLS "
            "embedding; use --head linear (mlp and attention heads are for cross-validation through the library)"
        )
    if not (encoder / "encoder.safetensors").is_file():
        _fail(f"{encoder}: no encoder.safetensors here; export a pretrained encoder with `umbif export RUN --out DIR`")

    table = _read_manifest(manifest, None).table
    cached = set(_cached_ids(cache, table))
    train = {}
    for task in chosen:
        samples = labelled_samples(table, task, cached)
        if samples.table.empty:
            if tasks:
                uncached = sum("not in the cache" in reason for reason in samples.skipped)
                hint = f" ({uncached} labelled exams are not cached: run `umbif preprocess`)" if uncached else ""
                _fail(f"{manifest}: no labelled samples for task {task!r}{hint}; drop it from --tasks")
            console.print(f"[yellow]note[/]: no labelled samples for {task}; it is left out", highlight=False)
            continue
        train[task] = samples.table
    if not train:
        _fail(f"{manifest}: no labelled samples for any task among the cached exams; add labels or run preprocess")
    counts = ", ".join(f"{t} {len(s)} ({int(s['y'].sum())} positive)" for t, s in train.items())
    console.print(f"fine-tuning on {counts}", highlight=False)

    columns = (TextColumn("finetune"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
    try:
        with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("epochs", total=settings_obj.epochs)

            def on_epoch(epoch: int, total: int, record: dict) -> None:
                auc = record["val_auc"]
                text = f"train {record['train_loss']:.3f} val {record['val_loss']:.3f} auc {auc:.3f}"
                progress.update(bar, completed=epoch, description=text)

            result = run(encoder, cache, train, settings_obj, on_epoch=on_epoch)
        path = save_finetuned(result, out_dir)
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(str(err))
    stopped = len(result.history)
    note = f", stopped early after {stopped}" if stopped < settings_obj.epochs else ""
    thresholds = ", ".join(f"{t} {v:.3f}" for t, v in result.thresholds.items())
    out.print(
        f"[green]done[/]: best epoch {result.best_epoch} of {stopped}{note}; thresholds {thresholds} "
        f"-> {escape(str(path))}",
        highlight=False,
    )
