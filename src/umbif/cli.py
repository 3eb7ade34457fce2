"""The ``umbif`` command line: a thin Typer layer that parses options and calls one library
function per command. Heavy modules are imported inside the commands so ``--help`` stays fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from umbif import __version__

app = typer.Typer(
    name="umbif",
    help=(
        "UMBIF: build and use a brain-MRI foundation model from your own routine scans.\n\n"
        "Data path: `umbif ingest` (files -> manifest), `umbif manifest validate|summary`, "
        "`umbif preprocess` (manifest -> fast exam cache), `umbif cache info|show`. "
        "No data yet? `umbif synth` writes a synthetic multi-site glioma archive.\n\n"
        "Model: `umbif pretrain` (hybrid self-supervised pretraining; torchrun for several GPUs), "
        "`umbif export` (the encoder alone, for `umbif.load_encoder`)."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)
ingest_app = typer.Typer(
    help="Build a manifest from image files on disk (one adapter per layout).", no_args_is_help=True
)
manifest_app = typer.Typer(help="Check and describe a manifest (CSV or Parquet).", no_args_is_help=True)
cache_app = typer.Typer(help="Look into an exam cache written by `umbif preprocess`.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(manifest_app, name="manifest")
app.add_typer(cache_app, name="cache")

# Logs and pipes get 120 columns (rich would wrap tables at 80); terminals and $COLUMNS keep theirs.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
console = Console(stderr=True, width=_WIDTH, soft_wrap=True)  # messages stay one line (grep-able logs)
out = Console(width=_WIDTH, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"umbif {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """UMBIF command line."""


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


RootOption = Annotated[
    Path | None,
    typer.Option(help="Folder the manifest's paths are relative to (default: the manifest's own folder)."),
]


def _read_manifest(path: Path, root: Path | None):
    from umbif.data.manifest import Manifest

    try:
        return Manifest.read(path, root)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))


# ---------------------------------------------------------------------------------------- manifest
@manifest_app.command("validate")
def manifest_validate(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (.csv or .parquet).")],
    root: RootOption = None,
    no_files: Annotated[bool, typer.Option("--no-files", help="Skip the check that every file exists.")] = False,
) -> None:
    """Report every problem of a manifest with its row and column; exit 1 if any is an error.

    Checks: required columns filled, duplicate exam_id, exams without a sequence, paths leaving
    the manifest's root, missing files, label values outside their set, non-numeric timepoints.
    """
    from umbif.data.manifest import errors, validate

    table = _read_manifest(manifest, root)
    problems = validate(table, check_files=not no_files)
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        out.print(f"[{style}]{escape(str(problem))}[/]", highlight=False)
    n_errors = len(errors(problems))
    summary = f"{len(table)} exams, {n_errors} errors, {len(problems) - n_errors} warnings"
    if n_errors:
        _fail(f"{manifest}: {summary}; fix the rows above and validate again")
    out.print(f"[green]ok[/]: {escape(str(manifest))}: {summary}", highlight=False)


@manifest_app.command("summary")
def manifest_summary(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (.csv or .parquet).")],
    root: RootOption = None,
) -> None:
    """Print exams and patients per site, sequence availability and label balance as tables."""
    from umbif.data.manifest import summarize

    tables = summarize(_read_manifest(manifest, root))
    out.print(_rich_table(tables["sites"].reset_index(), "Exams per site and sequence availability"))
    out.print(_rich_table(tables["labels"], "Label balance (positive / negative class)"))


def _rich_table(frame, title: str) -> Table:
    import pandas as pd

    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        table.add_column(str(column), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    return table


# ------------------------------------------------------------------------------------------ ingest
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Manifest to write (.csv or .parquet); default ROOT/manifest.csv. Must be in ROOT or above it.",
    ),
]
SiteOption = Annotated[str | None, typer.Option(help="Site name for every exam (default: ROOT's folder name).")]
LabelsOption = Annotated[
    Path | None,
    typer.Option(help="CSV of labels to join (columns idh, mgmt, codeletion_1p19q, outcome, optional site)."),
]
SubjectOption = Annotated[str, typer.Option(help="Column of the labels CSV that holds the subject id.")]
JoinOption = Annotated[str, typer.Option(help="Join the labels CSV on 'patient' or 'exam' ids.")]
AliasOption = Annotated[
    Path | None,
    typer.Option("--aliases", help="YAML with extra sequence names and names to ignore (see docs/ingest.md)."),
]


def _write_ingested(report, root: Path, out_path: Path | None) -> None:
    from umbif.data.manifest import PathEscapeError, errors, validate

    for problem in report.problems:
        console.print(f"[yellow]warning:[/] {escape(str(problem))}", highlight=False)
    target = out_path or root / "manifest.csv"
    try:
        manifest = report.manifest.relocate(target.parent)
    except PathEscapeError as err:
        _fail(str(err))
    manifest.write(target)
    n_errors = len(errors(validate(manifest)))
    out.print(
        escape(
            f"wrote {target}: {len(manifest)} exams, {len(report.problems)} files or rows reported"
            + (f", {n_errors} validation errors (run `umbif manifest validate {target}`)" if n_errors else "")
        ),
        highlight=False,
    )
    if n_errors:
        raise typer.Exit(1)


def _run_ingest(adapter, root: Path, out_path: Path | None, *args) -> None:
    """Run an ingest adapter on ``root`` and write its manifest; bad input is one clear error."""
    try:
        report = adapter(root, *args)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    _write_ingested(report, root, out_path)


def _aliases(path: Path | None):
    from umbif.config import AliasConfig
    from umbif.data.sequences import alias_table

    try:
        config = AliasConfig.from_yaml(path) if path else AliasConfig()
        return alias_table(config.aliases, config.ignore)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))


@ingest_app.command("folder")
def ingest_folder(
    root: Annotated[Path, typer.Argument(help="Folder with one sub-folder per exam (or patient/exam).")],
    out_path: OutOption = None,
    site: SiteOption = None,
    labels: LabelsOption = None,
    subject_column: SubjectOption = "subject",
    join_on: JoinOption = "patient",
    aliases: AliasOption = None,
) -> None:
    """Build a manifest from a plain folder layout.

    Each folder that holds NIfTI files is an exam; its files are placed by name through the alias
    table (`t1`, `T1n`, `t1ce`, `T1GD`, `t2w`, `t2f`, `FLAIR`, `seg`, `brain_mask`, ...). With
    ROOT/patient/exam/ folders, the patient is the first level and exams are ordered by name.
    Files that cannot be placed are reported, never guessed.
    """
    from umbif.data.sources.folder import ingest_folder as run

    _run_ingest(run, root, out_path, _aliases(aliases), site, labels, subject_column, join_on)


@ingest_app.command("brats")
def ingest_brats(
    root: Annotated[Path, typer.Argument(help="BraTS 2021 or 2023 training/validation folder.")],
    out_path: OutOption = None,
    site: SiteOption = None,
    labels: LabelsOption = None,
    subject_column: SubjectOption = "subject",
    join_on: JoinOption = "patient",
) -> None:
    """Build a manifest from a BraTS layout.

    2021: `BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz`;
    2023: `BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`
    (the trailing -000 is the timepoint of patient 00000).
    """
    from umbif.data.sources.brats import ingest_brats as run

    _run_ingest(run, root, out_path, site, labels, subject_column, join_on)


OutFolderOption = Annotated[
    Path, typer.Option("--out", help="Folder for the NIfTI files and manifest.csv (created; must not be ROOT).")
]
KeyFileOption = Annotated[
    Path | None,
    typer.Option(help="File holding the secret pseudonymisation key (default: $UMBIF_PSEUDONYM_KEY); keep it apart."),
]


def _progress_columns(name: str):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    return TextColumn(name), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()


@ingest_app.command("dicom")
def ingest_dicom(
    root: Annotated[Path, typer.Argument(help="Folder of DICOM files: any layout, any number of studies.")],
    out_dir: OutFolderOption,
    key_file: KeyFileOption = None,
    site: SiteOption = None,
    rules: Annotated[
        Path | None, typer.Option(help="YAML with series classification rules (see docs/dicom.md).")
    ] = None,
) -> None:
    """Convert a DICOM archive into pseudonymised NIfTI exams and a manifest.

    Files are grouped into studies and series from their headers; each series is classified as
    T1 / T1c / T2 / FLAIR (names, TR/TE/TI, contrast tags) and converted with checked geometry to
    `OUT/<patient>/<exam>/<sequence>.nii.gz`. Localizers, derived and multi-frame series, other and
    ambiguous series, and stacks that are not one regular volume (missing slice, gantry tilt) are
    reported with the reason, never guessed. Patient ids become keyed pseudonyms and dates become
    days since the patient's first exam. `OUT/series.csv` lists every series and what became of it.
    """
    from rich.progress import Progress

    from umbif.data.dicom import SeriesRules
    from umbif.data.dicom import ingest_dicom as run
    from umbif.data.pseudonym import Pseudonymiser

    try:
        pseudonymiser = Pseudonymiser.from_user(key_file)
        rules_obj = SeriesRules.from_yaml(rules) if rules else None
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    with Progress(*_progress_columns("ingest dicom"), console=console, transient=False) as progress:
        tasks: dict[str, object] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        try:
            report = run(root, out_dir, pseudonymiser, site, rules_obj, on_progress)
        except (FileNotFoundError, ValueError) as err:
            _fail(str(err))
    _write_ingested(report, out_dir, out_dir / "manifest.csv")


@ingest_app.command("rsna")
def ingest_rsna(
    root: Annotated[
        Path, typer.Argument(help="RSNA-MICCAI MGMT folder (holding train/ and train_labels.csv) or its train/.")
    ],
    out_dir: OutFolderOption,
    key_file: Annotated[
        Path | None, typer.Option(help="Pseudonymise the public case ids with the key in this file (optional).")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels CSV (default: train_labels.csv next to train/).")] = None,
    site: SiteOption = None,
) -> None:
    """Convert the RSNA-MICCAI BraTS 2021 MGMT DICOM folders into NIfTI exams and a manifest.

    Each case folder `train/00012/{FLAIR,T1w,T1wCE,T2w}/Image-N.dcm` becomes exam `rsna-00012`
    (patient `00012`, as in BraTS 2021) with slices sorted by position; `MGMT_value` 0/1 from
    `train_labels.csv` becomes mgmt unmethylated/methylated. Known bad cases (00109, 00123, 00709)
    and unrecognised files are reported. Files already converted are kept (a rerun resumes).
    """
    from rich.progress import Progress

    from umbif.data.pseudonym import Pseudonymiser
    from umbif.data.sources.rsna import ingest_rsna as run

    try:
        pseudonymiser = Pseudonymiser.from_user(key_file) if key_file else None
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    with Progress(*_progress_columns("ingest rsna"), console=console, transient=False) as progress:
        task = progress.add_task("cases", total=None)
        try:
            report = run(
                root,
                out_dir,
                pseudonymiser,
                labels,
                site,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except (FileNotFoundError, ValueError) as err:
            _fail(str(err))
    _write_ingested(report, out_dir, out_dir / "manifest.csv")


@ingest_app.command("ucsf")
def ingest_ucsf(
    root: Annotated[Path, typer.Argument(help="UCSF-PDGM download: folders UCSF-PDGM-0004_nifti/ anywhere below.")],
    out_path: OutOption = None,
    labels: Annotated[
        Path | None, typer.Option(help="The metadata table (UCSF-PDGM-metadata_v2.csv or later): IDH, MGMT, 1p/19q.")
    ] = None,
    site: Annotated[str, typer.Option(help="Site name for every exam (default: UCSF-PDGM).")] = "UCSF-PDGM",
    bias_corrected: Annotated[
        bool, typer.Option("--bias-corrected", help="Use the N4 bias-corrected *_bias images, not the plain ones.")
    ] = False,
) -> None:
    """Build a manifest from UCSF-PDGM (docs/ingest.md).

    `UCSF-PDGM-0004_nifti/UCSF-PDGM-0004_{T1,T1c,T2,FLAIR}.nii.gz` are the sequences,
    `_tumor_segmentation` the seg, `_brain_segmentation` the brain mask; ADC, DWI, SWI, ASL and DTI
    maps are skipped. `UCSF-PDGM-0433_FU007d_nifti` is a follow-up of patient 0433. The metadata's
    three-digit ids (`UCSF-PDGM-004`) match the four-digit folders.
    """
    from umbif.data.sources.ucsf import ingest_ucsf as run

    _run_ingest(run, root, out_path, labels, site, bias_corrected)


@ingest_app.command("upenn")
def ingest_upenn(
    root: Annotated[Path, typer.Argument(help="UPENN-GBM NIfTI-files folder (or a folder above it).")],
    out_path: OutOption = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="The clinical table (UPENN-GBM_clinical_info_v2.1.csv): IDH1, MGMT, PsP_TP_score."),
    ] = None,
    site: Annotated[str, typer.Option(help="Site name for every exam (default: UPENN-GBM).")] = "UPENN-GBM",
) -> None:
    """Build a manifest from UPENN-GBM (docs/ingest.md).

    `images_structural/UPENN-GBM-00001_11/UPENN-GBM-00001_11_{T1,T1GD,T2,FLAIR}.nii.gz` are the
    sequences, `images_segm/..._segm` (or else `automated_segm/..._automated_approx_segm`) the seg.
    Scan `_11` is the baseline (timepoint 0), `_21` the follow-up (timepoint 1); unstripped, DTI and
    DSC images are skipped.
    """
    from umbif.data.sources.upenn import ingest_upenn as run

    _run_ingest(run, root, out_path, labels, site)


@ingest_app.command("egd")
def ingest_egd(
    root: Annotated[Path, typer.Argument(help="Erasmus Glioma Database folder (SUBJECTS/EGD-0001/... below it).")],
    out_path: OutOption = None,
    labels: Annotated[
        Path | None, typer.Option(help="Genetic_and_Histological_labels as .tsv or .csv: IDH, 1p19q (1 / 0 / -1).")
    ] = None,
    site: Annotated[str, typer.Option(help="Site name for every exam (default: EGD).")] = "EGD",
) -> None:
    """Build a manifest from the Erasmus Glioma Database (docs/ingest.md).

    `EGD-0001/{T1,T1GD,T2,FLAIR}.nii.gz` are the sequences and `MASK.nii.gz` the tumour seg;
    `METADATA/Brain_mask.nii.gz`, the atlas brain mask, is every exam's brain mask. -1 in the labels
    table means missing.
    """
    from umbif.data.sources.egd import ingest_egd as run

    _run_ingest(run, root, out_path, labels, site)


@ingest_app.command("lumiere")
def ingest_lumiere(
    root: Annotated[Path, typer.Argument(help="LUMIERE Imaging folder (Patient-001/week-000-1/... below it).")],
    out_path: OutOption = None,
    labels: Annotated[
        Path | None, typer.Option(help="LUMIERE-Demographics_Pathology.csv: IDH and MGMT per patient.")
    ] = None,
    ratings: Annotated[
        Path | None, typer.Option(help="LUMIERE-ExpertRating-v202211.csv: RANO rating per exam -> outcome.")
    ] = None,
    site: Annotated[str, typer.Option(help="Site name for every exam (default: LUMIERE).")] = "LUMIERE",
) -> None:
    """Build a manifest from LUMIERE (docs/ingest.md).

    `Patient-001/week-044/{T1,CT1,T2,FLAIR}.nii.gz` are the sequences; timepoint is the week. With
    --ratings, PD becomes outcome progression and CR/PR/SD treatment_effect on exams after the
    post-operative scan; Pre-Op and Post-Op exams get none.
    """
    from umbif.data.sources.lumiere import ingest_lumiere as run

    _run_ingest(run, root, out_path, labels, ratings, site)


# -------------------------------------------------------------------------------------- preprocess
@app.command("preprocess")
def preprocess(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (.csv or .parquet).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Cache folder (created; reused on reruns).")],
    root: RootOption = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML with preprocessing settings (see configs/preprocess.yaml).")
    ] = None,
    spacing: Annotated[float | None, typer.Option(help="Isotropic output voxel size in mm (default 2).")] = None,
    shape: Annotated[str | None, typer.Option(help="Output grid as XxYxZ voxels (default 96x96x96).")] = None,
    workers: Annotated[int, typer.Option(help="Processes working in parallel.")] = 1,
    shard: Annotated[str, typer.Option(help="Only this part of the exams, as i/n (cluster array jobs).")] = "0/1",
) -> None:
    """Preprocess every exam into a fast, memory-mappable cache.

    Per exam: read NIfTI and check the header, resample all sequences to one RAS grid, brain mask
    (from the manifest or automatic), z-score inside the mask, crop/pad around the brain, float16.
    Exams already cached with the same settings and files are skipped; a failing exam is listed in
    CACHE/quarantine.csv and the others go on. Exit code 1 when any exam failed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from umbif.config import PreprocessConfig
    from umbif.data.cache import Shard, run_preprocess

    try:
        settings = PreprocessConfig.from_yaml(config).to_dict() if config else {}
        if spacing is not None:
            settings["spacing"] = (spacing, spacing, spacing)
        if shape is not None:
            settings["shape"] = tuple(int(n) for n in shape.lower().split("x"))
        settings_obj = PreprocessConfig.model_validate(settings)
        shard_obj = Shard.parse(shard)
    except ValueError as err:
        _fail(f"bad settings: {err}")
    table = _read_manifest(manifest, root)
    columns = (TextColumn("preprocess"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("exams", total=None)
        report = run_preprocess(
            table,
            out_dir,
            settings_obj,
            workers=workers,
            shard=shard_obj,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    for failure in report.failures:
        console.print(f"[red]quarantined[/] {escape(failure.exam_id)}: {escape(failure.reason)}", highlight=False)
    summary = f"{report.done} preprocessed, {report.skipped} already cached, {len(report.failures)} failed"
    if report.failures:
        _fail(f"{summary}; see {out_dir / 'quarantine.csv'}, fix those files and rerun (finished exams are kept)")
    out.print(f"[green]done[/]: {summary} -> {escape(str(out_dir))}", highlight=False)


# ------------------------------------------------------------------------------------------- cache
CacheArgument = Annotated[Path, typer.Argument(help="Cache folder written by `umbif preprocess`.")]


@cache_app.command("info")
def cache_info(
    cache: CacheArgument,
    verify: Annotated[bool, typer.Option(help="Also check every cached file against its checksum.")] = False,
) -> None:
    """Print what a cache holds: settings, exams cached and quarantined, sequences, size.

    With `--verify`, every file is checked against the checksum in the index; exit 1 on a mismatch.
    """
    from umbif.data.cache import describe

    try:
        info = describe(cache, verify=verify)
    except FileNotFoundError as err:
        _fail(str(err))
    settings = ", ".join(f"{k}={v}" for k, v in info["preprocess"].items())
    out.print(f"[bold]{escape(str(cache))}[/]  plan {info['plan_fingerprint']}\n  {settings}", highlight=False)
    counts = ", ".join(f"{s} {n}" for s, n in info["sequence_counts"].items())
    out.print(
        f"  {info['exams']} exams cached ({counts}; {info['with_seg']} with segmentation), "
        f"{info['quarantined']} quarantined, {info['bytes'] / 2**20:.1f} MiB "
        f"({info['bytes_per_exam'] / 2**20:.2f} MiB per exam)",
        highlight=False,
    )
    if info["quarantined"]:
        out.print(f"  quarantined exams and why: {escape(str(cache / 'quarantine.csv'))}", highlight=False)
    for message in info["corrupt"]:
        console.print(f"[red]corrupt[/] {escape(message)}", highlight=False)
    if info["corrupt"]:
        _fail(f"{len(info['corrupt'])} exams fail their checksum; rerun `umbif preprocess` to rebuild them")
    if verify:
        out.print("[green]ok[/]: every file matches its checksum")


@cache_app.command("show")
def cache_show(
    cache: CacheArgument,
    out_path: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    exam: Annotated[str | None, typer.Option(help="Exam id to draw (default: the first cached exam).")] = None,
) -> None:
    """Draw a cached exam as a PNG: each sequence in three mid-brain slices, with the brain mask
    (cyan) and tumour segmentation (red) outlined. Use it to check preprocessing by eye."""
    from umbif import SEQUENCES
    from umbif.data.datasets import CacheDataset
    from umbif.viz import plot_exam

    try:
        dataset = CacheDataset(cache, exam_ids=[exam] if exam else None, masks=True)
    except (FileNotFoundError, KeyError) as err:
        _fail(str(err))
    if not len(dataset):
        _fail(f"{cache} holds no exam yet; run `umbif preprocess` first")
    item = dataset[0]
    present = item["present"].numpy()
    names = [s for s, p in zip(SEQUENCES, present, strict=True) if p]
    plot_exam(
        item["image"][present].float().numpy(),
        names,
        out_path,
        brain_mask=item["brain_mask"].numpy(),
        seg=item["seg"].numpy(),
        title=item["exam_id"],
    )
    out.print(f"wrote {escape(str(out_path))}", highlight=False)


# ------------------------------------------------------------------------------------------- synth
@app.command("synth")
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (created; a rerun resumes).")],
    exams: Annotated[int | None, typer.Option(help="Total exams: routine pool + labelled glioma pairs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; the same seed gives the same files.")] = None,
    sites: Annotated[int | None, typer.Option(help="Number of sites, 1-6 (default 5).")] = None,
    spacing: Annotated[float | None, typer.Option(help="Base voxel size in mm (default 2; sites vary it).")] = None,
    workers: Annotated[int, typer.Option(help="Processes rendering in parallel (output does not change).")] = 1,
    preview: Annotated[bool, typer.Option(help="Also write preview.png: a few exams x sequences.")] = False,
    config: Annotated[
        Path | None, typer.Option(help="YAML with generator settings (see configs/synth.yaml); options win.")
    ] = None,
) -> None:
    """Generate a synthetic multi-site brain-MRI archive with a labelled glioma cohort.

    Anatomy comes from the MNI152 template shipped with nilearn; sites differ in contrast, bias
    field, noise, voxel size, slice thickness, orientation, intensity scale, missing sequences,
    file naming and IDH prevalence. A quarter of the exams (default) form the labelled glioma cohort:
    one baseline and one follow-up exam per patient, with IDH, MGMT, 1p/19q (IDH-mutant only) and
    post-treatment outcome; the rest is a routine pool (normal, white-matter lesions, infarcts,
    extra-axial masses, unlabelled gliomas) for pretraining.

    Writes images/, manifest.csv (ready for `umbif preprocess`), ground_truth.csv and
    cohort_card.json/.md with the oracle AUC of every task: the best any model can reach here.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from umbif.config import SynthConfig
    from umbif.data.synthetic.generate import generate

    try:
        settings = SynthConfig.from_yaml(config).to_dict() if config else {}
        given = {"exams": exams, "seed": seed, "sites": sites, "spacing": spacing}
        settings.update({k: v for k, v in given.items() if v is not None})
        settings_obj = SynthConfig.model_validate(settings)
    except (ValueError, FileNotFoundError) as err:
        _fail(f"bad settings: {err}")
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("exams", total=None)
            report = generate(
                settings_obj,
                out_dir,
                workers=workers,
                preview=preview,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except ValueError as err:
        _fail(str(err))
    auc = ", ".join(f"{task} {value:.3f}" for task, value in report.oracle_auc.items())
    out.print(
        f"[green]done[/]: {report.done} exams rendered, {report.skipped} already there -> "
        f"{escape(str(out_dir / 'manifest.csv'))}\n  oracle AUC (best achievable): {auc}\n"
        f"  cohort card: {escape(str(out_dir / 'cohort_card.md'))}",
        highlight=False,
    )


# ---------------------------------------------------------------------------------------- pretrain
@app.command("pretrain")
def pretrain(
    manifest: Annotated[Path, typer.Argument(help="Manifest of the exams to train on (.csv or .parquet).")],
    cache: Annotated[Path, typer.Option(help="Exam cache written by `umbif preprocess` from that manifest.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics.jsonl, previews.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML with run settings (see configs/pretrain.yaml); options win.")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Model size: tiny, small, base or large.")] = None,
    objective: Annotated[str | None, typer.Option(help="hybrid (default), mae or contrastive (ablations).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps in total.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Exams per step and process.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    amp: Annotated[str | None, typer.Option(help="auto (bf16 where supported), bf16 or off.")] = None,
    crop: Annotated[
        str | None, typer.Option(help="random (default) or tumour: crops centred on the segmented tumour.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint.")] = False,
) -> None:
    """Pretrain UMBIF self-supervised: masked reconstruction + contrastive (hybrid objective).

    Trains on the manifest's exams that are in the cache, writes checkpoints (safetensors + JSON)
    every `checkpoint_every` steps and at the end, per-term losses to metrics.jsonl and
    reconstruction previews to previews/. A killed run continues exactly with `--resume`. On a
    cluster, run the same command under `torchrun --nproc_per_node N` (DistributedDataParallel).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from umbif.config import read_yaml
    from umbif.models.umbif import PRESETS
    from umbif.train.pretrain import PretrainConfig, describe
    from umbif.train.pretrain import pretrain as run

    try:
        settings = read_yaml(config) if config else {}  # only what the file sets: defaults come later
        model = dict(settings.get("model") or {})
        if preset is not None:  # --preset decides every size, whatever the YAML said
            sizes = set().union(*PRESETS.values())  # the fields a preset sets
            model = {k: v for k, v in model.items() if k not in sizes} | {"preset": preset}
        if objective is not None:
            model["objective"] = objective
        given = {"total_steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "amp": amp, "crop": crop}
        settings.update({k: v for k, v in given.items() if v is not None}, model=model)
        if steps is not None and "warmup_steps" not in settings:
            settings["warmup_steps"] = max(1, min(100, steps // 10))
        settings_obj = PretrainConfig.model_validate(settings)
    except (ValueError, FileNotFoundError) as err:
        _fail(f"bad settings: {err}")
    table = _read_manifest(manifest, None).table
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    if is_main:
        console.print(describe(settings_obj), highlight=False)
    columns = (TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
    try:
        with Progress(*columns, TimeRemainingColumn(), console=console, disable=not is_main) as progress:
            task = progress.add_task("", total=settings_obj.total_steps)

            def on_step(step: int, total: int, losses: dict[str, float]) -> None:
                text = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k.startswith("loss"))
                progress.update(task, completed=step, description=text)

            result = run(
                cache, out_dir, settings_obj, exam_ids=_cached_ids(cache, table), resume=resume, on_step=on_step
            )
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(str(err))
    if is_main:
        out.print(
            f"[green]done[/]: step {result['step']}, loss {result['loss']:.4f} (reconstruction "
            f"{result['loss_rec']:.4f}, contrastive {result['loss_con']:.4f}) -> {escape(str(out_dir))}",
            highlight=False,
        )


def _cached_ids(cache: Path, table) -> list[str]:
    """The manifest's exams that the cache holds (the others are named once, not trained on)."""
    from umbif.data.cache import read_index

    try:
        cached = {e["exam_id"] for e in read_index(cache)["exams"]}
    except FileNotFoundError as err:
        _fail(f"{err}; run `umbif preprocess` first")
    ids = [e for e in table["exam_id"] if e in cached]
    missing = len(table) - len(ids)
    if missing:
        console.print(f"[yellow]note[/]: {missing} exams of the manifest are not in the cache and are left out")
    return ids


@app.command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder of `umbif pretrain` (or one checkpoint folder).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for encoder.safetensors + config.json.")],
) -> None:
    """Write the pretrained encoder alone, ready for `umbif.load_encoder(OUT)`."""
    from umbif.train.export import export_encoder

    try:
        path, step = export_encoder(run_dir, out_dir)
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(str(err))
    out.print(f"wrote {escape(str(path))} (step {step}); load it with umbif.load_encoder", highlight=False)


# Downstream commands live in umbif/commands/ and register themselves on `app` when imported.
import umbif.commands  # noqa: E402, F401
