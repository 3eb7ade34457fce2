"""`umbif synth`: a synthetic multi-site glioma archive, for trying everything without data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umbif.commands.common import done, fail, os_message, progress_bar

ExamsOption = Annotated[int | None, typer.Option(help="Total exams: routine pool + labelled glioma pairs.")]
SeedOption = Annotated[int | None, typer.Option(help="Random seed; the same seed gives the same files.")]
SpacingOption = Annotated[float | None, typer.Option(help="Base voxel size in mm (default 2; sites vary it).")]
WorkersOption = Annotated[int, typer.Option(help="Processes rendering in parallel (output does not change).")]
ConfigOption = Annotated[
    Path | None, typer.Option(help="YAML or JSON of generator settings (see configs/synth.yaml); options win.")
]


def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (created; a rerun resumes).")],
    exams: ExamsOption = None,
    seed: SeedOption = None,
    sites: Annotated[int | None, typer.Option(help="Number of sites, 1-6 (default 5).")] = None,
    spacing: SpacingOption = None,
    workers: WorkersOption = 1,
    preview: Annotated[bool, typer.Option(help="Also write preview.png: a few exams x sequences.")] = False,
    config: ConfigOption = None,
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
    from umbif.data.synthetic.generate import generate
    from umbif.data.synthetic.settings import load_config

    try:
        settings = load_config(config, exams=exams, seed=seed, sites=sites, spacing=spacing)
    except (ValueError, FileNotFoundError) as err:
        fail(f"bad settings: {err}")
    try:
        with progress_bar("synth") as bar:
            report = generate(settings, out_dir, workers=workers, preview=preview, on_progress=bar.update)
    except ValueError as err:
        fail(str(err))
    except OSError as err:  # --out is a file, a full disk, an unwritable folder: finished exams are kept
        fail(os_message(err))
    auc = (
        ", ".join(f"{task} {value:.3f}" for task, value in report.oracle_auc.items())
        or "undefined (too few labelled patients)"
    )
    done(
        f"{report.done} exams rendered, {report.skipped} already there -> {out_dir / 'manifest.csv'}\n"
        f"  oracle AUC (best achievable): {auc}\n  cohort card: {out_dir / 'cohort_card.md'}"
    )
