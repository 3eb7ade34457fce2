"""`umbif ingest folder|brats|dicom|rsna|ucsf|upenn|egd|lumiere`: image files on disk -> a manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from umbif.commands.common import AliasOption, alias_table, console, fail, os_message, out, progress_bar

if TYPE_CHECKING:
    from umbif.data.cache import Shard
    from umbif.data.dicom import DicomReport
    from umbif.data.sources.common import IngestReport

app = typer.Typer(help="Build a manifest from image files on disk (one adapter per layout).", no_args_is_help=True)

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
OutFolderOption = Annotated[
    Path, typer.Option("--out", help="Folder for the NIfTI files and manifest.csv (created; must not be ROOT).")
]
KeyFileOption = Annotated[
    Path | None,
    typer.Option(help="File holding the secret pseudonymisation key (default: $UMBIF_PSEUDONYM_KEY); keep it apart."),
]
DicomSiteOption = Annotated[
    str | None,
    typer.Option(
        help="Site name for every exam (default: 'site'; ROOT's folder name is never used: it may name a patient)."
    ),
]
RulesOption = Annotated[Path | None, typer.Option(help="YAML with series classification rules (see docs/dicom.md).")]
DicomShardOption = Annotated[
    str, typer.Option(help="Part i of n, as i/n (cluster array jobs): of the files to scan or the patients to convert.")
]
RsnaKeyOption = Annotated[
    Path | None, typer.Option(help="Pseudonymise the public case ids with the key in this file (optional).")
]
RsnaLabelsOption = Annotated[Path | None, typer.Option(help="Labels CSV (default: train_labels.csv next to train/).")]
RsnaSiteOption = Annotated[str | None, typer.Option(help="Site name for every exam (default: RSNA-MGMT).")]


def _write_ingested(report: IngestReport, root: Path, out_path: Path | None) -> None:
    """Print what the adapter could not use, write its manifest and say whether it validates (exit 1 if not)."""
    from umbif.data.manifest import PathEscapeError

    for problem in report.problems:
        console.print(f"[yellow]warning:[/] {escape(str(problem))}", highlight=False)
    target = out_path or root / "manifest.csv"
    try:
        manifest, n_errors = report.write(target)
    except PathEscapeError as err:
        fail(str(err))
    except OSError as err:  # a full disk or an unwritable folder
        fail(os_message(err))
    out.print(
        escape(
            f"wrote {target}: {len(manifest)} exams, {len(report.problems)} files or rows reported"
            + (f", {n_errors} validation errors (run `umbif manifest validate {target}`)" if n_errors else "")
        ),
        highlight=False,
    )
    if n_errors:
        raise typer.Exit(1)


def _run_ingest(adapter: Callable[..., IngestReport], root: Path, out_path: Path | None, *args: Any) -> None:
    """Run an ingest adapter on ``root`` and write its manifest; bad input is one clear error."""
    try:
        report = adapter(root, *args)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    _write_ingested(report, root, out_path)


@app.command("folder")
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

    _run_ingest(run, root, out_path, alias_table(aliases), site, labels, subject_column, join_on)


@app.command("brats")
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


@app.command("dicom")
def ingest_dicom(
    root: Annotated[Path, typer.Argument(help="Folder of DICOM files: any layout, any number of studies.")],
    out_dir: OutFolderOption,
    key_file: KeyFileOption = None,
    site: DicomSiteOption = None,
    rules: RulesOption = None,
    workers: Annotated[int, typer.Option(help="Processes reading headers and converting series.")] = 1,
    shard: DicomShardOption = "0/1",
    scan_only: Annotated[bool, typer.Option("--scan-only", help="Only read the headers into OUT/.scan.")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Only join the --shard jobs' parts (ROOT not read).")] = False,
) -> None:
    """Convert a DICOM archive into pseudonymised NIfTI exams and a manifest.

    Files are grouped into studies and series from their headers; each series is classified as
    T1 / T1c / T2 / FLAIR (names, TR/TE/TI, contrast tags) and converted with checked geometry to
    `OUT/<patient>/<exam>/<sequence>.nii.gz`. Localizers, derived and multi-frame series, other and
    ambiguous series, and stacks that are not one regular volume (missing slice, gantry tilt) are
    reported with the reason, never guessed. Patient ids become keyed pseudonyms and dates become
    days since the patient's first exam; files are named relative to their exam, names that hold an
    identifier as keyed hashes. `OUT/series.csv` lists every series and what became of it.
    A large archive goes in resumable cluster jobs (docs/dicom.md): `--scan-only --shard i/n` reads the
    headers of part i of the files into OUT/.scan (keyed hashes, no name, id, date, UID or path), then
    `--shard i/n` converts part i of the patients, then `--merge` writes manifest.csv and series.csv.
    Without them all runs in one job; a rerun reads and converts only what changed.
    """
    from umbif.data.cache import Shard
    from umbif.data.dicom import merge_dicom
    from umbif.data.dicom_io import WorkerDied

    if scan_only and merge:
        fail("--scan-only and --merge are different stages: give one")
    try:
        part = Shard.parse(shard)
        if scan_only:
            _scan_dicom(root, out_dir, key_file, workers, part)
            return
        report = merge_dicom(out_dir) if merge else _convert_dicom(root, out_dir, key_file, site, rules, workers, part)
    except (FileNotFoundError, ValueError, WorkerDied) as err:
        fail(str(err))
    except OSError as err:  # a full disk or an unwritable folder: what was done is kept
        fail(os_message(err))
    if merge or part.count == 1:
        _write_ingested(report, out_dir, out_dir / "manifest.csv")
        return
    for problem in report.problems:
        console.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False)
    done = f"wrote part {shard} in {out_dir}: {len(report.manifest)} exams, {len(report.problems)} series reported"
    out.print(escape(f"{done}; when every part is written: umbif ingest dicom ROOT --out OUT --merge"), highlight=False)


def _scan_dicom(root: Path, out_dir: Path, key_file: Path | None, workers: int, shard: Shard) -> None:
    """`umbif ingest dicom --scan-only`: read the headers of a part of the files into OUT/.scan, and say so."""
    from umbif.data.dicom_scan import scan_dicom
    from umbif.data.pseudonym import Pseudonymiser

    pseudonymiser = Pseudonymiser.from_user(key_file)
    with progress_bar("scan dicom") as bar:
        report = scan_dicom(root, out_dir, pseudonymiser, workers, shard, bar.update)
    read = f"{report.scanned} files read ({report.unreadable} no DICOM image)"
    out.print(escape(f"scanned part {shard.index}/{shard.count} of ROOT: {read}, {report.skipped} already in "
                     f"{out_dir / '.scan'}"), highlight=False)  # fmt: skip


def _convert_dicom(
    root: Path, out_dir: Path, key_file: Path | None, site: str | None, rules: Path | None, workers: int, shard: Shard
) -> DicomReport:
    """`umbif ingest dicom [--shard i/n]`: the exams of a part of the patients (of all: the whole ingest)."""
    from umbif.data.dicom import SeriesRules
    from umbif.data.dicom import ingest_dicom as run
    from umbif.data.pseudonym import Pseudonymiser

    pseudonymiser = Pseudonymiser.from_user(key_file)
    rules_obj = SeriesRules.from_yaml(rules) if rules else None
    with progress_bar("ingest dicom", staged=True) as bar:
        return run(root, out_dir, pseudonymiser, site, rules_obj, bar.update_stage, workers, shard)


@app.command("rsna")
def ingest_rsna(
    root: Annotated[
        Path, typer.Argument(help="RSNA-MICCAI MGMT folder (holding train/ and train_labels.csv) or its train/.")
    ],
    out_dir: OutFolderOption,
    key_file: RsnaKeyOption = None,
    labels: RsnaLabelsOption = None,
    site: RsnaSiteOption = None,
) -> None:
    """Convert the RSNA-MICCAI BraTS 2021 MGMT DICOM folders into NIfTI exams and a manifest.

    Each case folder `train/00012/{FLAIR,T1w,T1wCE,T2w}/Image-N.dcm` becomes exam `rsna-00012`
    (patient `00012`, as in BraTS 2021) with slices sorted by position; `MGMT_value` 0/1 from
    `train_labels.csv` becomes mgmt unmethylated/methylated. Known bad cases (00109, 00123, 00709)
    and unrecognised files are reported. Files already converted are kept (a rerun resumes).
    """
    from umbif.data.pseudonym import Pseudonymiser
    from umbif.data.sources.rsna import ingest_rsna as run

    try:
        pseudonymiser = Pseudonymiser.from_user(key_file) if key_file else None
        with progress_bar("ingest rsna") as bar:
            report = run(root, out_dir, pseudonymiser, labels, site, on_progress=bar.update)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    _write_ingested(report, out_dir, out_dir / "manifest.csv")


@app.command("ucsf")
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


@app.command("upenn")
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


@app.command("egd")
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


@app.command("lumiere")
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
