"""`umbif embed`, `umbif probe` and `umbif finetune`: the pretrained encoder put to work on the labelled
tasks (frozen embeddings, linear probes, fine-tuning), each writing a folder the next step reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from umbif.commands.common import (
    CacheOption,
    EncoderOption,
    ManifestArgument,
    SeedOption,
    TasksOption,
    cached_exams,
    console,
    done,
    fail,
    note,
    open_cache,
    out,
    parse_tasks,
    progress_bar,
    read_manifest,
)

if TYPE_CHECKING:
    import pandas as pd

    from umbif.train.supervised import TrainedModel

ClassifierOption = Annotated[Path, typer.Option("--out", help="Classifier folder for `umbif predict`.")]
MinPerClassOption = Annotated[int, typer.Option(help="Patients needed in each class to train a task.")]
FinetuneTasksOption = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated tasks among outcome, idh, mgmt, codeletion_1p19q (default: every task with labels)."
    ),
]
FinetuneConfigOption = Annotated[
    Path | None, typer.Option(help="YAML with fine-tuning settings (see configs/finetune.yaml); options win.")
]
EpochsOption = Annotated[int | None, typer.Option(help="Maximum epochs (early stopping may end sooner).")]
HeadOption = Annotated[
    str | None, typer.Option(help="linear (default; the only head a classifier folder holds), mlp or attention.")
]
ModeOption = Annotated[
    str | None, typer.Option(help="full (default), partial (the last blocks) or frozen (heads only).")
]


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

    data, exam_ids = cached_exams(cache, read_manifest(manifest).table)
    try:
        with progress_bar("embed", len(exam_ids)) as bar:
            result = embed_exams(
                encoder, data, exam_ids, store_dir=out_dir, batch_size=batch_size, device=device, on_progress=bar.update
            )
    except (ValueError, FileNotFoundError, KeyError) as err:
        fail(str(err))
    path = out_dir / "embeddings" / f"{result.key}.npz"
    done(f"{len(exam_ids)} exams, {result.values.shape[1]} features -> {path}")


def probe(
    manifest: ManifestArgument,
    cache: CacheOption,
    encoder: EncoderOption,
    out_dir: ClassifierOption,
    tasks: TasksOption = None,
    seed: Annotated[int, typer.Option(help="Seeds the inner folds.")] = 0,
    min_per_class: MinPerClassOption = 4,
) -> None:
    """Train linear probes on all labelled exams and write a classifier for `umbif predict`.

    Per task: logistic regression on the frozen encoder's embeddings (outcome: baseline and
    follow-up embeddings combined), regularisation and decision threshold (Youden) chosen by
    patient-grouped inner cross-validation. To measure how well this works, use `umbif evaluate`.
    """
    from umbif.adapt.probe import fit_classifier

    table, data, chosen = read_manifest(manifest).table, open_cache(cache), parse_tasks(tasks)
    try:
        with progress_bar("embed") as bar:
            report = fit_classifier(
                table, data, encoder, out_dir, chosen, seed=seed, min_per_class=min_per_class, on_progress=bar.update
            )
    except (ValueError, FileNotFoundError, KeyError) as err:
        fail(str(err))
    for text in report["notes"]:
        note(text)
    for name, info in report["tasks"].items():
        out.print(
            f"  {name}: {info['n_train']} samples, C {info['C']:.3g}, inner-CV AUC {info['inner_auc']:.3f}, "
            f"threshold {info['threshold']:.3f}",
            highlight=False,
        )
    done(f"classifier -> {out_dir}; use it with `umbif predict --model`")


def finetune(
    manifest: Annotated[Path, typer.Argument(help="Manifest with the labels (.csv or .parquet).")],
    cache: CacheOption,
    encoder: Annotated[Path, typer.Option(help="Pretrained encoder folder (`umbif export`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Classifier folder to write (for `umbif predict`).")],
    tasks: FinetuneTasksOption = None,
    config: FinetuneConfigOption = None,
    epochs: EpochsOption = None,
    head: HeadOption = None,
    mode: ModeOption = None,
    seed: SeedOption = None,
) -> None:
    """Fine-tune the UMBIF encoder with one head per task and save it as a classifier folder.

    One model learns all chosen tasks at once; a sample counts only for the tasks it has a label for
    (1p/19q exists only for IDH-mutant tumours). `outcome` is scored from the patient's (baseline,
    follow-up) pair. A fifth of the training patients (val_fraction) is held out to stop early and to
    choose each task's decision threshold (Youden J). Writes OUT/encoder.safetensors, config.json,
    heads.safetensors, classifier.json, history.jsonl (loss and AUC per epoch) and provenance.json.
    """
    from umbif.adapt.finetune import FinetuneConfig, check_saveable, save_finetuned, training_samples
    from umbif.adapt.finetune import finetune as run

    try:
        settings = FinetuneConfig.from_options(config, epochs=epochs, head=head, mode=mode, seed=seed)
    except (ValueError, FileNotFoundError) as err:
        fail(f"bad settings: {err}")
    chosen = parse_tasks(tasks) if tasks else None
    try:
        check_saveable(settings, encoder)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    table, data = read_manifest(manifest).table, open_cache(cache)
    try:
        train, notes = training_samples(table, data, chosen)
    except ValueError as err:
        fail(f"{manifest}: {err}")
    for text in notes:
        note(text)
    console.print(f"fine-tuning on {_counts(train)}", highlight=False)
    try:
        with progress_bar("finetune", settings.epochs, elapsed=True) as bar:
            result = run(encoder, data, train, settings, on_epoch=lambda e, n, record: bar.update(e, n, _epoch(record)))
        path = save_finetuned(result, out_dir)
    except (ValueError, FileNotFoundError, KeyError) as err:
        fail(str(err))
    _print_finetuned(result, settings.epochs, path)


def _counts(train: dict[str, pd.DataFrame]) -> str:
    return ", ".join(f"{t} {len(s)} ({int(s['y'].sum())} positive)" for t, s in train.items())


def _epoch(record: dict[str, Any]) -> str:
    return f"train {record['train_loss']:.3f} val {record['val_loss']:.3f} auc {record['val_auc']:.3f}"


def _print_finetuned(result: TrainedModel, max_epochs: int, path: Path) -> None:
    stopped = len(result.history)
    early = f", stopped early after {stopped}" if stopped < max_epochs else ""
    thresholds = ", ".join(f"{t} {v:.3f}" for t, v in result.thresholds.items())
    done(f"best epoch {result.best_epoch} of {stopped}{early}; thresholds {thresholds} -> {path}")
