"""Predict the glioma tasks of new exams with a classifier folder, and show what drove each prediction.

    exam folder or NIfTI files -> sequences by name (the alias table of ``umbif ingest folder``)
    -> preprocess exactly as the training cache (the classifier's PreprocessConfig, float16 values)
    -> encoder CLS embedding on the stored grid -> each task's linear head -> score >= threshold
    -> occlusion maps (one per task) -> OUT/prediction.json, OUT/overlay_<task>.png, OUT/saliency_<task>.nii.gz

Nothing that names a patient is written: an exam is called by a *label* the user controls (the
exam folder's name, or ``label=``), file names are never copied into the outputs, and NIfTI header
text is never read. Rename folders that carry names, or pass a pseudonymous ``label``.

Example:
    >>> result = predict_exam("runs/probe/classifier", "scans/exam-17", out_dir="out/exam-17")  # doctest: +SKIP
    >>> result["tasks"]["idh"]["probability"], result["tasks"]["idh"]["label"]                 # doctest: +SKIP
    (0.83, 'mutant')
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from umbif import SEQUENCES, __version__
from umbif.adapt.classifier import Classifier, load_classifier, pair_array
from umbif.data.io import write_nifti
from umbif.data.manifest import Exam
from umbif.data.preprocess import preprocess_exam
from umbif.data.sequences import AliasTable, alias_table, assign_files, nifti_stem
from umbif.models.umbif import patchify, unpatchify
from umbif.utils import atomic_write, inside, write_json
from umbif.viz import display_slice

FORMAT = "umbif-prediction"
FORMAT_VERSION = 1
PREDICTION_FILE = "prediction.json"
BACKGROUND_ORDER: tuple[str, ...] = ("t1c", "flair", "t2", "t1")  # overlay drawn on the first present one
ExamInput = str | Path | Sequence[str | Path]  # an exam folder, or the NIfTI files of one exam


@dataclass
class PreparedExam:
    """An exam as the encoder sees it: the training cache's values on the classifier's grid."""

    label: str
    image: torch.Tensor  # [S, X, Y, Z] float32, zero in the channels of absent sequences
    present: torch.Tensor  # [S] bool
    brain: np.ndarray  # [X, Y, Z] bool, the brain mask of preprocessing
    affine: np.ndarray  # [4, 4] grid voxel -> RAS mm
    sequences: tuple[str, ...]  # present sequences, canonical order
    mask_source: str  # "manifest" (a brain mask file was given) or "auto"
    brain_clipped: float  # fraction of the brain outside the grid


def find_exam(exam: ExamInput, table: AliasTable | None = None, label: str | None = None) -> Exam:
    """The :class:`~umbif.data.manifest.Exam` of an exam folder or a list of NIfTI files.

    Files are placed on sequences by name exactly as ``umbif ingest folder`` does
    (:func:`~umbif.data.sequences.assign_files`); a brain mask file is used, a tumour segmentation
    is not needed and left out. Only the folder's own files count, not sub-folders.

    Args:
        exam: a folder holding one exam's NIfTI files, or the files themselves.
        table: the alias table (default: the built-in one).
        label: what to call the exam (default: the folder's name, or the files' folder's name).

    Returns:
        the exam, with ``exam_id == patient_id == label``.

    Raises:
        FileNotFoundError: the folder or a file does not exist.
        ValueError: no NIfTI file, a file that is not NIfTI, a name that maps to no sequence or to
            several, two files for one sequence, or no image sequence at all (the message names them).

    Example:
        >>> find_exam("scans/exam-17").sequences   # doctest: +SKIP
        {'t1': PosixPath('scans/exam-17/t1.nii.gz'), 'flair': PosixPath('scans/exam-17/FLAIR.nii.gz')}
    """
    table = table or alias_table()
    paths = [Path(exam)] if isinstance(exam, str | Path) else [Path(p) for p in exam]
    if not paths:
        raise ValueError("no exam given: pass an exam folder or its NIfTI files")
    if len(paths) == 1 and paths[0].is_dir():
        where = paths[0]
        files = sorted(
            p for p in where.iterdir() if p.is_file() and not p.name.startswith(".") and nifti_stem(p) is not None
        )
        if not files:
            raise ValueError(
                f"{where}: no NIfTI file (.nii, .nii.gz) in this folder; give the folder that holds one exam's files "
                "(convert DICOM first with `umbif ingest dicom` or dcm2niix)"
            )
    else:
        for path in paths:
            if path.is_dir():
                raise ValueError(f"{path}: a folder among files; give one exam folder, or that exam's NIfTI files")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such exam folder or file")
            if nifti_stem(path) is None:
                raise ValueError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
        names = [p.name for p in paths]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{twice}: given more than once; give each file of the exam once")
        files, where = paths, paths[0].parent
    placed = assign_files(files, table)
    if placed.problems:
        raise ValueError(
            f"{where}: " + "; ".join(placed.problems) + " (the files must be named after their sequence, "
            "e.g. t1, t1c, t2, flair; umbif predict --aliases adds names)"
        )
    sequences = {s: placed.files[s] for s in SEQUENCES if s in placed.files}
    if not sequences:
        raise ValueError(f"{where}: only masks, no image sequence ({', '.join(SEQUENCES)}) among the files")
    label = label or where.resolve().name  # the exam folder, or the folder the files are in
    return Exam(
        exam_id=label,
        patient_id=label,
        site="",
        timepoint=None,
        sequences=sequences,
        brain_mask=placed.files.get("brain_mask"),
        seg=None,
        labels={},
    )


def prepare_exam(classifier: Classifier, exam: Exam) -> PreparedExam:
    """Preprocess ``exam`` with the classifier's settings into the encoder's input, like the cache.

    The cache stores float16 values (``umbif.data.cache``), so the image is rounded to float16 too:
    prediction then sees exactly the numbers the heads were trained on.

    Raises:
        ValueError: the exam has a sequence the encoder does not take, or preprocessing refuses a
            file (:class:`~umbif.data.io.ImageError`, naming it).
    """
    accepted = SEQUENCES[: classifier.model_config.num_sequences]
    extra = [s for s in exam.sequences if s not in accepted]
    if extra:
        files = ", ".join(str(exam.sequences[s]) for s in extra)
        raise ValueError(
            f"{files}: the encoder takes only {', '.join(accepted)} (num_sequences="
            f"{classifier.model_config.num_sequences}); leave the {', '.join(extra)} file(s) out"
        )
    result = preprocess_exam(exam, classifier.preprocess)
    grid = tuple(result.image.shape[1:])
    if grid != tuple(classifier.image_size):  # the card guarantees preprocess.shape == image_size
        raise ValueError(f"exam {exam.exam_id}: preprocessed to {grid}, the encoder runs on {classifier.image_size}")
    image = torch.zeros(len(accepted), *grid)
    present = torch.tensor([s in result.sequences for s in accepted])
    image[present] = torch.from_numpy(result.image.astype(np.float16).astype(np.float32))
    return PreparedExam(
        label=exam.exam_id,
        image=image,
        present=present,
        brain=result.masks[0].astype(bool),
        affine=result.affine,
        sequences=result.sequences,
        mask_source=result.mask_source,
        brain_clipped=result.brain_clipped,
    )


def task_features(classifier: Classifier, task: str, embedding: np.ndarray, baseline: np.ndarray | None) -> np.ndarray:
    """The features a task's head reads: the embeddings ``[N, E]`` themselves, or pair features with ``baseline``."""
    if classifier.heads[task].inputs == "exam":
        return embedding
    if baseline is None:
        raise ValueError(f"task {task} reads a (baseline, follow-up) pair; give the baseline exam")
    return pair_array(np.broadcast_to(baseline, embedding.shape), embedding)


@torch.inference_mode()
def occlusion_maps(
    classifier: Classifier,
    exam: PreparedExam,
    tasks: Sequence[str],
    baseline: np.ndarray | None = None,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Occlusion sensitivity per task: how much the task's logit drops when one patch is hidden.

    Each encoder patch (all present sequences together) in turn is set to 0, the mean of the
    z-scored brain, and the exam is embedded again; the map holds ``logit(exam) - logit(occluded)``
    per patch (positive: the region pushed towards the positive class). Patches holding no nonzero
    voxel are not run: hiding them changes nothing, so their value is exactly 0. One batched pass
    of the occluded exams serves every task, as the heads are linear on the same embedding.

    Occlusion rather than attention rollout: rollout follows the encoder's attention alone and is
    the same map for every task, while the heads, not the attention, decide a task; occlusion
    measures each task's own output, on this model, at a bounded cost (at most L encoder passes:
    216 for 96^3 voxels in 16^3 patches).

    Args:
        classifier: the loaded classifier.
        exam: the exam from :func:`prepare_exam`.
        tasks: tasks to map; pair tasks need ``baseline``.
        baseline: ``[1, E]`` embedding of the baseline exam, for pair tasks.
        batch_size: occluded exams per encoder pass.

    Returns:
        task -> ``[gx, gy, gz]`` float64 map of logit drops on the patch grid.
    """
    p, grid = classifier.model_config.patch_size, classifier.model_config.grid
    image, present = exam.image[None], exam.present[None]  # [1, S, X, Y, Z], [1, S]
    patches = patchify(image, p)  # [1, S, L, P]
    occupied = torch.tensor(occupied_patches(exam, p), dtype=torch.long)  # [K] patches worth hiding
    reference = classifier.embed(image, present)  # [1, E]
    embeddings = []
    for start in range(0, len(occupied), batch_size):
        index = occupied[start : start + batch_size]
        batch = patches.expand(len(index), -1, -1, -1).clone()  # [b, S, L, P]
        batch[torch.arange(len(index)), :, index] = 0.0  # hide patch index[i] in exam i, every sequence
        embeddings.append(classifier.embed(unpatchify(batch, p, grid), present.expand(len(index), -1)))
    occluded = np.concatenate(embeddings) if embeddings else np.zeros((0, reference.shape[1]), np.float32)
    maps = {}
    for task in tasks:
        head = classifier.heads[task].head
        drop = head.logit(task_features(classifier, task, reference, baseline)) - head.logit(
            task_features(classifier, task, occluded, baseline)
        )  # [K]
        flat = np.zeros(len(patches[0, 0]))
        flat[occupied.numpy()] = drop
        maps[task] = flat.reshape(grid)
    return maps


def voxel_map(patch_map: np.ndarray, patch_size: int, region: np.ndarray) -> np.ndarray:
    """A patch map ``[gx, gy, gz]`` on the voxel grid ``[X, Y, Z]``, kept inside ``region``.

    Each voxel takes its patch's value (no smoothing: the evidence is per patch). Outside
    ``region`` the map is 0: there the occlusion changed nothing (the image is already 0 outside
    the brain), so the drop is evidence about the region's voxels alone.
    """
    voxels = patch_map.repeat(patch_size, 0).repeat(patch_size, 1).repeat(patch_size, 2)
    return np.where(region, voxels, 0.0).astype(np.float32)


def plot_overlay(
    background: np.ndarray, saliency: np.ndarray, path: str | Path, title: str, background_name: str
) -> Path:
    """Save sagittal / coronal / axial slices through the map's strongest voxel with the map as a heatmap.

    Args:
        background: ``[X, Y, Z]`` z-scored image on a RAS grid (shown between -3 and 3).
        saliency: ``[X, Y, Z]`` map; red where hiding the region lowers the positive logit, blue where it raises it.
        path: the PNG (written atomically).
        title: figure title (pseudonymous labels only).
        background_name: the sequence shown, for the caption.

    Returns:
        ``path``.
    """
    strongest = np.abs(saliency)
    centre = np.array(np.unravel_index(int(strongest.argmax()), saliency.shape)) if strongest.any() else None
    if centre is None:  # nothing to show: slice through the image's centre of mass
        centre = np.round(np.argwhere(background != 0).mean(axis=0)).astype(int)
    limit = float(strongest.max()) or 1.0
    fig = Figure(figsize=(9.0, 3.4), facecolor="black", layout="constrained")
    axes = fig.subplots(1, 3)
    for axis, (ax, view) in enumerate(zip(axes, ("sagittal", "coronal", "axial"), strict=True)):
        ax.set_facecolor("black")  # outside the image (exactly 0 after preprocessing) stays black
        image = display_slice(background, axis, centre[axis])
        ax.imshow(np.ma.masked_where(image == 0, image), cmap="gray", vmin=-3, vmax=3)
        heat = display_slice(saliency, axis, centre[axis])
        shown = ax.imshow(
            np.ma.masked_where(heat == 0, heat),
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            alpha=0.55,
            interpolation="nearest",
        )
        ax.set_title(f"{view} ({'xyz'[axis]} = {centre[axis]})", color="white", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=list(axes), fraction=0.025, pad=0.02)
    bar.set_label("logit drop when hidden", color="white", fontsize=8)
    bar.ax.tick_params(colors="white", labelsize=7)
    fig.suptitle(title, color="white", fontsize=10)
    fig.text(0.01, 0.02, f"{background_name}, patient's right on the right", color="gray", fontsize=7)
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, facecolor="black")
    return path


def predict_exam(
    model: str | Path | Classifier,
    exam: ExamInput,
    baseline: ExamInput | None = None,
    saliency: bool = True,
    out_dir: str | Path | None = None,
    label: str | None = None,
    baseline_label: str | None = None,
    aliases: AliasTable | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Predict every task of a classifier for one exam (and, for pair tasks, its baseline exam).

    Exam tasks are scored on ``exam``; pair tasks (e.g. outcome) on ``pair_array(baseline, exam)``
    and are reported as not run, with the reason, without ``baseline``. A task is positive when its
    probability is at least its stored threshold.

    Args:
        model: a classifier folder, or a loaded :class:`~umbif.adapt.classifier.Classifier`.
        exam: the exam folder or its NIfTI files (the follow-up, for pair tasks).
        baseline: the earlier exam of the same patient, for pair tasks.
        saliency: compute occlusion maps and write ``overlay_<task>.png`` and ``saliency_<task>.nii.gz``
            (the map on the preprocessed RAS grid, for any viewer) to ``out_dir``; without
            ``out_dir`` no map is computed (use :func:`occlusion_maps` for the arrays).
        out_dir: where to write ``prediction.json`` (atomically) and the maps; None writes nothing.
        label, baseline_label: what to call the exams in the outputs (default: their folder names).
        aliases: extra sequence names (default: the built-in alias table).
        device: where the encoder runs (when ``model`` is a folder).
        batch_size: exams per encoder pass for the occlusion maps.

    Returns:
        the prediction: ``tasks`` (per task ``status`` "done" with ``probability``, ``threshold``,
        ``decision``, ``label``; "not run" with ``reason``; or "failed" with ``reason`` and no label when the
        probability is not finite), ``sequences``, ``missing_sequences``, the baseline's, and what the
        saliency cost. The same dict is ``prediction.json`` (strict JSON: never a NaN).

    Raises:
        FileNotFoundError, ValueError: a missing or damaged classifier folder, or an exam that cannot
            be read (no NIfTI, unnamed or doubled sequence, corrupt file, a sequence the encoder does
            not take, sequences that do not overlap); the message names the file.

    Example:
        >>> predict_exam("runs/probe/classifier", "scans/p7-followup", baseline="scans/p7-baseline",
        ...              out_dir="out/p7")["tasks"]["outcome"]["label"]   # doctest: +SKIP
        'progression'
    """
    start = time.perf_counter()
    classifier = model if isinstance(model, Classifier) else load_classifier(model, device=device)
    table = aliases or alias_table()
    followup = prepare_exam(classifier, find_exam(exam, table, label))
    before = prepare_exam(classifier, find_exam(baseline, table, baseline_label)) if baseline is not None else None
    embedding = classifier.embed(followup.image[None], followup.present[None])  # [1, E]
    base_embedding = classifier.embed(before.image[None], before.present[None]) if before is not None else None

    results: dict[str, dict[str, Any]] = {}
    runnable = []
    for task, spec in classifier.heads.items():
        if spec.inputs == "pair" and base_embedding is None:
            results[task] = {
                "status": "not run",
                "inputs": spec.inputs,
                "reason": "reads a (baseline, follow-up) pair; give the baseline exam (--baseline)",
            }
            continue
        features = task_features(classifier, task, embedding, base_embedding)
        probability = float(spec.head.score(features)[0]) if np.isfinite(features).all() else math.nan
        if not math.isfinite(probability):  # damaged or diverged weights: no decision can be made
            results[task] = {"status": "failed", "inputs": spec.inputs, "reason": _non_finite_reason(embedding)}
            continue
        decision = probability >= spec.threshold
        results[task] = {
            "status": "done",
            "inputs": spec.inputs,
            "probability": probability,
            "threshold": spec.threshold,
            "decision": decision,
            "label": spec.positive if decision else spec.negative,
            "positive": spec.positive,
            "negative": spec.negative,
        }
        runnable.append(task)
    notes = []
    if before is not None and all(classifier.heads[t].inputs == "exam" for t in classifier.heads):
        notes.append("a baseline exam was given, but no task of this classifier reads pairs; it was not used")

    saliency_info = None
    if saliency and out_dir is not None and runnable:
        tick = time.perf_counter()
        maps = occlusion_maps(classifier, followup, runnable, base_embedding, batch_size)
        region = followup.brain if classifier.preprocess.zero_outside_mask else np.ones_like(followup.brain)
        name = next(s for s in BACKGROUND_ORDER if s in followup.sequences)
        background = followup.image[SEQUENCES.index(name)].numpy()
        for task in runnable:
            entry = results[task]
            if not np.isfinite(maps[task]).all():
                entry["saliency_skipped"] = "hiding some patches gave a non-finite score; no map is drawn"
                continue
            volume = voxel_map(maps[task], classifier.model_config.patch_size, region)
            title = (
                f"{followup.label}: {task}  p = {entry['probability']:.3f} (threshold {entry['threshold']:.3f})"
                f" -> {entry['label']}"
            )
            plot_overlay(background, volume, inside(out_dir, Path(out_dir) / f"overlay_{task}.png"), title, name)
            write_nifti(inside(out_dir, Path(out_dir) / f"saliency_{task}.nii.gz"), volume, followup.affine)
            entry["overlay"] = f"overlay_{task}.png"
            entry["saliency_map"] = f"saliency_{task}.nii.gz"
        saliency_info = {
            "method": "occlusion",
            "fill": 0.0,
            "patch_size": classifier.model_config.patch_size,
            "occluded_patches": len(occupied_patches(followup, classifier.model_config.patch_size)),
            "seconds": round(time.perf_counter() - tick, 3),
        }

    accepted = SEQUENCES[: classifier.model_config.num_sequences]
    result: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "exam": followup.label,
        "sequences": list(followup.sequences),
        "missing_sequences": [s for s in accepted if s not in followup.sequences],
        "brain_mask": followup.mask_source,
        "brain_clipped": round(followup.brain_clipped, 4),
        "baseline": None
        if before is None
        else {
            "exam": before.label,
            "sequences": list(before.sequences),
            "missing_sequences": [s for s in accepted if s not in before.sequences],
        },
        "classifier": {"method": classifier.method, "image_size": list(classifier.image_size)},
        "tasks": results,
        "saliency": saliency_info,
        "notes": notes,
        "umbif": __version__,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if out_dir is not None:
        write_json(Path(out_dir) / PREDICTION_FILE, result)
    return result


def _non_finite_reason(embedding: np.ndarray) -> str:
    """Why a task has no probability: the encoder or the head gave NaN or infinity."""
    where = "the encoder's embedding of this exam" if not np.isfinite(embedding).all() else "the task's head"
    return (
        f"the probability is not a finite number ({where} gave NaN or infinity); the classifier's weights are "
        "damaged or out of range, so no label is given. Train or export the classifier again"
    )


def occupied_patches(exam: PreparedExam, patch_size: int) -> list[int]:
    """Indices (row-major on the patch grid) of the patches with a nonzero voxel in some sequence,
    the ones :func:`occlusion_maps` hides."""
    patches = patchify(exam.image[None], patch_size)[0]  # [S, L, P]
    return (patches != 0).any(dim=(0, 2)).nonzero().flatten().tolist()
