"""`umbif pretrain` (self-supervised pretraining on a cache) and `umbif export` (its encoder alone)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from umbif.commands.common import SeedOption, cached_exams, console, done, fail, out, progress_bar, read_manifest

if TYPE_CHECKING:
    from umbif.commands.common import Bar

ManifestArgument = Annotated[Path, typer.Argument(help="Manifest of the exams to train on (.csv or .parquet).")]
CacheOption = Annotated[Path, typer.Option(help="Exam cache written by `umbif preprocess` from that manifest.")]
RunOption = Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, metrics.jsonl, previews.")]
ConfigOption = Annotated[
    Path | None, typer.Option(help="YAML with run settings (see configs/pretrain.yaml); options win.")
]
PresetOption = Annotated[str | None, typer.Option(help="Model size: tiny, small, base or large.")]
ObjectiveOption = Annotated[str | None, typer.Option(help="hybrid (default), mae or contrastive (ablations).")]
StepsOption = Annotated[int | None, typer.Option(help="Optimiser steps in total.")]
BatchOption = Annotated[int | None, typer.Option(help="Exams per micro-batch and process.")]
LrOption = Annotated[float | None, typer.Option(help="Peak learning rate.")]
AmpOption = Annotated[str | None, typer.Option(help="auto (bf16 where supported), bf16 or off.")]
CropOption = Annotated[
    str | None, typer.Option(help="random (default) or tumour: crops centred on the segmented tumour.")
]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint (mode yes).")]
ResumeModeOption = Annotated[
    str | None,
    typer.Option(help="auto: continue --out's latest checkpoint if it has one, else start (requeued jobs); yes; no."),
]
WorkersOption = Annotated[int | None, typer.Option(help="Loader processes per training process (cut the crops).")]
PrefetchOption = Annotated[int | None, typer.Option("--prefetch", help="Reads each loader process prepares ahead.")]


def pretrain(
    manifest: ManifestArgument,
    cache: CacheOption,
    out_dir: RunOption,
    config: ConfigOption = None,
    preset: PresetOption = None,
    objective: ObjectiveOption = None,
    steps: StepsOption = None,
    batch_size: BatchOption = None,
    lr: LrOption = None,
    seed: SeedOption = None,
    amp: AmpOption = None,
    crop: CropOption = None,
    num_workers: WorkersOption = None,
    prefetch: PrefetchOption = None,
    resume: ResumeOption = False,
    resume_mode: ResumeModeOption = None,
) -> None:
    """Pretrain UMBIF self-supervised: masked reconstruction + contrastive (hybrid objective).

    Writes checkpoints, metrics.jsonl and previews to --out; a killed run continues exactly with `--resume`.
    On a cluster, run the same command under `torchrun` or `srun` with `--resume-mode auto`: SIGUSR1 or
    SIGTERM checkpoint at the next step and exit with code 75 (requeue; the job continues where it stopped).
    """
    from umbif.train.lifecycle import REQUEUE_EXIT, Preempted
    from umbif.train.pretrain import PretrainConfig, describe
    from umbif.train.pretrain import pretrain as run

    try:
        model = {"preset": preset, "objective": objective}
        given = {"total_steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "amp": amp, "crop": crop,
                 "num_workers": num_workers, "prefetch_factor": prefetch}  # fmt: skip
        settings = PretrainConfig.from_options(config, model=model, **given)
        mode, is_main = _resume_mode(resume, resume_mode), _is_main()
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        fail(f"bad settings: {err}")
    data, exam_ids = cached_exams(cache, read_manifest(manifest).table)
    if is_main:
        console.print(describe(settings), highlight=False)
    try:
        with progress_bar("pretrain", settings.total_steps, disable=not is_main) as bar:
            result = run(data, out_dir, settings, exam_ids=exam_ids, resume=mode, on_step=_on_step(bar))
    except Preempted as stopped:  # every rank says where it stopped; exit code 75: requeue the job
        console.print(f"stopped: {escape(str(stopped))}", highlight=False)
        raise typer.Exit(REQUEUE_EXIT) from None
    except (ValueError, FileNotFoundError, KeyError) as err:
        fail(str(err))
    if is_main:
        done(_summary(result, out_dir))


def _summary(result: dict, out_dir: Path) -> str:
    if "loss" not in result:  # resumed at its last step (e.g. a requeued job that had finished)
        return f"step {result['step']}: the run in {out_dir} was already complete"
    return (
        f"step {result['step']}, loss {result['loss']:.4f} (reconstruction {result['loss_rec']:.4f}, "
        f"contrastive {result['loss_con']:.4f}) -> {out_dir}"
    )


def _resume_mode(resume: bool, mode: str | None) -> str:
    """``--resume`` is ``--resume-mode yes``; without either, ``no``."""
    if resume and mode not in (None, "yes"):
        raise ValueError(f"--resume means --resume-mode yes; it contradicts --resume-mode {mode}")
    chosen = mode or ("yes" if resume else "no")
    if chosen not in ("auto", "yes", "no"):
        raise ValueError(f"--resume-mode must be auto, yes or no, got {chosen!r}")
    return chosen


def _is_main() -> bool:
    """Rank 0 of torchrun or srun (only it talks), or a single process."""
    from umbif.train.distributed import launch_env

    return (launch_env(os.environ) or {"rank": 0})["rank"] == 0


def _on_step(bar: Bar) -> Callable[[int, int, dict[str, float]], None]:
    """The ``on_step`` callback: the bar moves to the step, with the step's loss terms beside it."""

    def on_step(step: int, total: int, losses: dict[str, float]) -> None:
        bar.update(step, total, " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k.startswith("loss")))

    return on_step


def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder of `umbif pretrain` (or one checkpoint folder).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for encoder.safetensors + config.json.")],
) -> None:
    """Write the pretrained encoder alone, ready for `umbif.load_encoder(OUT)`."""
    from umbif.train.export import export_encoder

    try:
        path, step = export_encoder(run_dir, out_dir)
    except (ValueError, FileNotFoundError, KeyError) as err:
        fail(str(err))
    out.print(f"wrote {escape(str(path))} (step {step}); load it with umbif.load_encoder", highlight=False)
