"""`umbif predict`: a classifier folder applied to new exams, with a map of what drove each prediction."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from umbif.commands.common import AliasOption, alias_table, console, fail, note, out

if TYPE_CHECKING:
    from umbif.adapt.classifier import Classifier
    from umbif.data.sequences import AliasTable

ExamsArgument = Annotated[
    list[Path],
    typer.Argument(
        metavar="EXAM...", help="Exam folders (one exam each), or the NIfTI files of one exam.", show_default=False
    ),
]
ModelOption = Annotated[Path, typer.Option("--model", help="Classifier folder written by `umbif probe` or `finetune`.")]
BaselineOption = Annotated[
    list[Path] | None,
    typer.Option(help="The same patient's earlier exam, for pair tasks (outcome): a folder, or repeat for each file."),
]
OutOption = Annotated[
    Path, typer.Option("--out", help="Folder for the results: OUT/EXAM/prediction.json, overlays, maps.")
]
SaliencyOption = Annotated[
    bool, typer.Option("--saliency/--no-saliency", help="Compute occlusion maps and draw the overlays.")
]
DeviceOption = Annotated[str, typer.Option(help="Where the encoder runs: cpu, cuda, cuda:1 ...")]


def predict(
    exams: ExamsArgument,
    model: ModelOption,
    baseline: BaselineOption = None,
    out_dir: OutOption = Path("predictions"),
    saliency: SaliencyOption = True,
    aliases: AliasOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Predict IDH, MGMT, 1p/19q (and outcome, with `--baseline`) for new exams.

    Each EXAM folder holds one exam's NIfTI files, named after their sequence as for
    `umbif ingest folder` (`t1`, `t1c`/`t1gd`, `t2`, `flair`/`t2f`, optional `brain_mask`); or give
    the files of one exam. Missing sequences are allowed; the exam is preprocessed exactly like the
    training cache. Each task is positive when its probability reaches the classifier's threshold.

    Writes, per exam, `OUT/EXAM/prediction.json` and for each task an overlay PNG and a NIfTI map of
    what drove the prediction (occlusion: how much the task's logit drops when a patch is hidden;
    red: the region pushed towards the positive class). Exams are named by their folder, so name
    folders pseudonymously. An exam that fails is reported and the others are still predicted;
    a task whose probability is not a finite number is reported as failed, with no label. The exit
    code is 1 if any exam or task failed.

    Example: `umbif predict --model runs/probe/classifier scans/p7-followup --baseline scans/p7-baseline`
    """
    from umbif.adapt.classifier import load_classifier

    table = alias_table(aliases)
    try:
        classifier = load_classifier(model, device=device)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    items = _exams(exams)
    base = None if not baseline else (baseline[0] if len(baseline) == 1 and baseline[0].is_dir() else baseline)
    folders = _out_dirs([_label(e) for e in items], out_dir)
    failed = sum(
        not _predict_one(classifier, item, base, folder, saliency, table)
        for item, folder in zip(items, folders, strict=True)
    )
    if failed:
        fail(f"{failed} of {len(items)} exams failed, wholly or in a task (see above); the others were predicted")


def _predict_one(
    classifier: Classifier,
    exam: Path | list[Path],
    baseline: Path | list[Path] | None,
    folder: Path,
    saliency: bool,
    aliases: AliasTable,
) -> bool:
    """Predict one exam into ``folder`` and print the result; False (and the reason printed) if it or a task failed."""
    from umbif.predict import predict_exam

    try:
        with console.status(f"predicting {escape(_label(exam))}"):
            result = predict_exam(
                classifier, exam, baseline=baseline, saliency=saliency, out_dir=folder, aliases=aliases
            )
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[bold red]failed[/] {escape(_label(exam))}: {escape(str(err))}", highlight=False)
        return False
    out.print(_result_table(result))
    for task, entry in result["tasks"].items():
        if "overlay" in entry:
            out.print(f"  {task}: {escape(str(folder / entry['overlay']))}", highlight=False)
    for text in result["notes"]:
        note(text)
    out.print(f"wrote {escape(str(folder / 'prediction.json'))} ({result['seconds']:.1f} s)", highlight=False)
    failed = [task for task, entry in result["tasks"].items() if entry["status"] == "failed"]
    for task in failed:
        console.print(f"[bold red]failed[/] {escape(task)}: {escape(result['tasks'][task]['reason'])}", highlight=False)
    return not failed


def _exams(paths: list[Path]) -> list[Path | list[Path]]:
    """NIfTI files together are one exam; otherwise each path is an exam folder; a mix is refused."""
    from umbif.data.sequences import nifti_stem

    files = [p for p in paths if not p.is_dir() and nifti_stem(p) is not None]
    if len(files) == len(paths):
        return [paths]
    if files:
        fail(f"{files[0]}: give exam folders or the NIfTI files of one exam, not both")
    return list(paths)


def _out_dirs(labels: list[str], root: Path) -> list[Path]:
    """One output folder per exam, named after its label; repeated labels get -2, -3, ..."""
    from umbif.utils import safe_name

    seen: dict[str, int] = {}
    dirs = []
    for label in labels:
        name = safe_name(label)
        seen[name] = seen.get(name, 0) + 1
        dirs.append(root / (name if seen[name] == 1 else f"{name}-{seen[name]}"))
    return dirs


def _label(exam: Path | list[Path]) -> str:
    return (exam if isinstance(exam, Path) else exam[0].parent).resolve().name


def _result_table(result: dict[str, Any]) -> Table:
    missing = f"; missing {', '.join(result['missing_sequences'])}" if result["missing_sequences"] else ""
    title = f"exam {result['exam']} ({', '.join(result['sequences'])}{missing})"
    if result["baseline"]:
        title += f", baseline {result['baseline']['exam']}"
    table = Table(title=escape(title), title_justify="left")
    for column, justify in (("task", "left"), ("probability", "right"), ("threshold", "right"), ("decision", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for task, entry in result["tasks"].items():
        if entry["status"] != "done":
            status = "[bold red]failed[/]" if entry["status"] == "failed" else "[yellow]not run[/]"
            table.add_row(task, "-", "-", f"{status}: {escape(entry['reason'])}")
            continue
        decision = f"[bold]{escape(entry['label'])}[/]" if entry["decision"] else escape(entry["label"])
        table.add_row(task, f"{entry['probability']:.3f}", f"{entry['threshold']:.3f}", decision)
    return table
