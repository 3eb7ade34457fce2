"""`umbif preprocess` (manifest -> exam cache), `umbif cache index` (merge the shards) and `umbif cache info|show`
(look into a cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from umbif.commands.common import (
    RootOption,
    console,
    done,
    fail,
    note,
    open_cache,
    os_message,
    out,
    progress_bar,
    read_manifest,
)

app = typer.Typer(help="Look into an exam cache written by `umbif preprocess`.", no_args_is_help=True)

CacheArgument = Annotated[Path, typer.Argument(help="Cache folder written by `umbif preprocess`.")]
ConfigOption = Annotated[
    Path | None, typer.Option(help="YAML with preprocessing settings (see configs/preprocess.yaml).")
]
SpacingOption = Annotated[float | None, typer.Option(help="Isotropic output voxel size in mm (default 2).")]
ShapeOption = Annotated[str | None, typer.Option(help="Output grid as XxYxZ voxels (default 96x96x96).")]
ShardOption = Annotated[
    str,
    typer.Option(help="Only this part of the exams, as i/n (cluster array jobs); run `umbif cache index` after all."),
]


def preprocess(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (.csv or .parquet).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Cache folder (created; reused on reruns).")],
    root: RootOption = None,
    config: ConfigOption = None,
    spacing: SpacingOption = None,
    shape: ShapeOption = None,
    workers: Annotated[int, typer.Option(help="Processes working in parallel.")] = 1,
    shard: ShardOption = "0/1",
) -> None:
    """Preprocess every exam into a fast, memory-mappable cache.

    Per exam: read NIfTI and check the header, resample all sequences to one RAS grid, brain mask
    (from the manifest or automatic), z-score inside the mask, crop/pad around the brain, float16.
    Exams already cached with the same settings and files are skipped; a failing exam is listed in
    CACHE/quarantine.csv and the others go on. Exit code 1 when any exam failed.

    With --shard i/n (n > 1) the run checks and preprocesses its own exams only and writes what it did
    to CACHE/index.d/, never the shared index: run `umbif cache index CACHE` once every shard has finished.
    """
    from umbif.config import PreprocessConfig
    from umbif.data.cache import Shard, WorkerDied, run_preprocess
    from umbif.data.manifest import ManifestError

    try:
        grid = _grid(shape)
        voxel = (spacing, spacing, spacing) if spacing is not None else None
        settings = PreprocessConfig.from_options(config, spacing=voxel, shape=grid)
        part = Shard.parse(shard)
    except (ValueError, FileNotFoundError) as err:
        fail(f"bad settings: {err}")
    table = read_manifest(manifest, root)
    try:
        with progress_bar("preprocess") as bar:
            report = run_preprocess(table, out_dir, settings, workers=workers, shard=part, on_progress=bar.update)
    except ManifestError as err:  # the manifest as a whole (a required column missing)
        fail(f"{manifest}: {err}")
    except OSError as err:  # a full disk or an unwritable folder: the exams finished so far are kept
        fail(os_message(err))
    except WorkerDied as err:
        fail(str(err))
    for failure in report.failures:
        name = escape(failure.exam_id or "(no exam_id)")
        console.print(f"[red]quarantined[/] {name}: {escape(failure.reason)}", highlight=False)
    summary = f"{report.done} preprocessed, {report.skipped} already cached, {len(report.failures)} failed"
    if report.part is not None:
        note(f"shard {shard} wrote {report.part}; once every shard has finished, run `umbif cache index {out_dir}`")
    if report.failures:
        fail(f"{summary}; see {out_dir / 'quarantine.csv'}, fix those files and rerun (finished exams are kept)")
    done(f"{summary} -> {out_dir}")


def _grid(shape: str | None) -> tuple[int, ...] | None:
    """The ``--shape XxYxZ`` option as numbers (None when not given)."""
    if shape is None:
        return None
    try:
        return tuple(int(n) for n in shape.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape {shape!r} must be three whole numbers like 96x96x96") from None


@app.command("index")
def cache_index(
    cache: CacheArgument,
    workers: Annotated[int, typer.Option(help="Threads reading exam entries (a network file system likes 8-16).")] = 4,
) -> None:
    """Merge every shard's exams into the cache's index: run once after all `umbif preprocess --shard` jobs.

    Reads every exam entry on disk (the source of truth) and writes the index and quarantine.csv
    atomically, one merge at a time; running it again gives the same files. Exit 1 when a shard wrote no
    part (still running, failed or killed) or an entry cannot be read: the index then holds what is cached.
    """
    from umbif.data.cache import merge_index

    try:
        with progress_bar("index") as bar:
            report = merge_index(cache, workers=workers, on_progress=bar.update)
    except (FileNotFoundError, ValueError) as err:  # no cache, or a damaged plan
        fail(str(err))
    except OSError as err:
        fail(os_message(err))
    parts = f", {report.parts} shard parts" if report.parts or report.missing_shards else ""
    summary = f"{report.exams} exams indexed, {report.quarantined} quarantined{parts}"
    if report.other_plan:
        note(f"{report.other_plan} exam entries made with other settings are left out (rerun `umbif preprocess`)")
    if report.unlisted:
        note(f"{report.unlisted} indexed exams are in no shard part (cached by an earlier run)")
    for name in report.unreadable:
        console.print(f"[red]unreadable[/] {escape(name)}", highlight=False)
    if report.unreadable:
        fail(
            f"{summary}; {len(report.unreadable)} exam entries cannot be read: rerun `umbif preprocess` to rebuild them"
        )
    if report.missing_shards:
        shards = ", ".join(report.missing_shards[:10]) + (", ..." if len(report.missing_shards) > 10 else "")
        fail(
            f"{summary}; no part from shards {shards} (still running, failed or killed): rerun them with the "
            f"same --shard, then `umbif cache index {cache}` again"
        )
    done(f"{summary} -> {cache}")


@app.command("info")
def cache_info(
    cache: CacheArgument,
    verify: Annotated[bool, typer.Option(help="Also check every cached file against its checksum.")] = False,
    workers: Annotated[int, typer.Option(help="Threads checking files with --verify.")] = 1,
) -> None:
    """Print what a cache holds: settings, exams cached and quarantined, sequences, size.

    With `--verify`, every file is checked against the size and checksum in the index (on --workers
    threads); exit 1 on a mismatch, or when the index disagrees with the exams on disk.
    """
    from umbif.data.cache import describe

    try:
        with progress_bar("verify", disable=not verify) as bar:
            info = describe(cache, verify=verify, workers=workers, on_progress=bar.update)
    except (FileNotFoundError, ValueError) as err:  # no cache, or a damaged index or plan
        fail(str(err))
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
    if info["stale"]:
        console.print(f"[red]stale index[/]: {escape(info['stale'])}", highlight=False)
    for message in info["corrupt"]:
        console.print(f"[red]corrupt[/] {escape(message)}", highlight=False)
    if info["corrupt"]:
        fail(f"{len(info['corrupt'])} exams fail their checksum; rerun `umbif preprocess` to rebuild them")
    if verify and info["stale"]:
        fail("the index disagrees with the exams on disk (see above)")
    if verify:
        out.print("[green]ok[/]: every file matches its checksum")


@app.command("show")
def cache_show(
    cache: CacheArgument,
    out_path: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    exam: Annotated[str | None, typer.Option(help="Exam id to draw (default: the first cached exam).")] = None,
) -> None:
    """Draw a cached exam as a PNG: each sequence in three mid-brain slices, with the brain mask
    (cyan) and tumour segmentation (red) outlined. Use it to check preprocessing by eye."""
    try:
        _plot_cached_exam(cache, exam, out_path)
    except KeyError as err:
        fail(str(err.args[0]) if err.args else str(err))
    except ValueError as err:  # a damaged array: the message names the exam and says to rerun preprocess
        fail(str(err))
    except OSError as err:
        fail(os_message(err))
    out.print(f"wrote {escape(str(out_path))}", highlight=False)


def _plot_cached_exam(cache_dir: Path, exam: str | None, out_path: Path) -> None:
    """Draw one cached exam (default: the first) with :func:`umbif.viz.plot_exam`; ``KeyError`` if not cached."""
    from umbif import SEQUENCES
    from umbif.data.datasets import CacheDataset
    from umbif.viz import plot_exam

    dataset = CacheDataset(open_cache(cache_dir), [exam] if exam else None, masks=True)
    if not len(dataset):
        fail(f"{cache_dir} holds no exam yet; run `umbif preprocess` first")
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
