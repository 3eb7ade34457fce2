"""Figures people look at instead of reading numbers. Drawn on matplotlib ``Figure`` objects (no
pyplot, no global backend state), so they render the same on a headless cluster node as on a laptop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from umbif.utils import atomic_write

_VIEWS = ("sagittal", "coronal", "axial")


def display_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D slice of a RAS volume, turned so that up is superior (anterior in axial slices) and the
    patient's right is on the image's right (neurological convention, as nilearn draws)."""
    return np.rot90(np.take(volume, index, axis=axis))


def plot_exam(
    image: np.ndarray,
    names: Sequence[str],
    path: str | Path,
    brain_mask: np.ndarray | None = None,
    seg: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Save a grid of mid-brain slices: one row per sequence, sagittal / coronal / axial columns.

    Args:
        image: ``[C, X, Y, Z]`` volumes on a RAS grid (e.g. a cache entry); z-scored values are
            shown between -3 and 3.
        names: the C sequence names, row titles.
        path: the PNG to write (atomically).
        brain_mask: ``[X, Y, Z]``; its outline is drawn in cyan, and slices go through its centre.
        seg: ``[X, Y, Z]`` tumour labels; their outline is drawn in red.
        title: figure title (use pseudonymous ids only).
    """
    image = np.asarray(image, dtype=np.float32)
    centre_of = brain_mask if brain_mask is not None and brain_mask.any() else np.ones(image.shape[1:])
    centre = np.round(np.argwhere(centre_of).mean(axis=0)).astype(int)
    rows = len(names)
    fig = Figure(figsize=(7.5, 2.5 * rows), facecolor="black")
    axes = fig.subplots(rows, 3, squeeze=False)
    for row, name in enumerate(names):
        for col, view in enumerate(_VIEWS):
            ax = axes[row, col]
            ax.imshow(display_slice(image[row], col, centre[col]), cmap="gray", vmin=-3, vmax=3)
            for overlay, colour in ((brain_mask, "cyan"), (seg, "red")):
                if overlay is not None and overlay.any():
                    ax.contour(
                        display_slice(overlay > 0, col, centre[col]), levels=[0.5], colors=colour, linewidths=0.6
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(view, color="white", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, color="white", fontsize=10)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    return _save(fig, path, dpi=110)


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Lay out and write a figure as PNG, atomically."""
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, facecolor="black")
    return path


def _axial_at(path: Path, world: np.ndarray) -> np.ndarray:
    """The axial slice of a NIfTI file (reoriented to the closest RAS) through a world point (mm)."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    voxel = np.linalg.inv(image.affine) @ np.append(world, 1.0)
    z = int(np.clip(np.round(voxel[2]), 0, data.shape[2] - 1))
    return display_slice(data, 2, z)


def plot_synth_preview(manifest, kinds: Sequence[str], path: str | Path, count: int = 6) -> Path:
    """A montage of a few synthetic exams (rows) x the four sequences (columns), axial slices
    through the tumour (glioma exams) or the ventricles, each windowed to its own 1-99.5th percentile.

    Args:
        manifest: a :class:`umbif.data.manifest.Manifest` of a synthetic cohort.
        kinds: what each manifest row shows (``glioma``, ``normal``, ``wmh``, ...; ground truth).
        path: the PNG to write (atomically).
        count: how many exams: glioma baselines and follow-ups first, then one per routine finding.
    """
    from umbif import SEQUENCES

    kinds = list(kinds)
    gliomas = [i for i, kind in enumerate(kinds) if kind == "glioma"]
    picks = gliomas[: max(1, count // 2)]
    for kind in dict.fromkeys(kinds):  # one exam of each other finding, in order of appearance
        if kind != "glioma" and len(picks) < count:
            picks.append(kinds.index(kind))
    fig = Figure(figsize=(2.0 * len(SEQUENCES), 2.1 * len(picks)), facecolor="black")
    axes = fig.subplots(len(picks), len(SEQUENCES), squeeze=False)
    for row, index in enumerate(picks):
        exam = manifest.exam(index)
        world = np.array([0.0, -18.0, 15.0])
        if exam.seg is not None:
            import nibabel as nib

            seg = nib.load(exam.seg)
            labels = np.argwhere(np.asarray(seg.dataobj) > 0)
            if len(labels):
                world = (seg.affine @ np.append(labels.mean(axis=0), 1.0))[:3]
        for col, sequence in enumerate(SEQUENCES):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if sequence in exam.sequences:
                picture = _axial_at(exam.sequences[sequence], world)
                inside = picture[picture > 0]
                low, high = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)
                ax.imshow(picture, cmap="gray", vmin=low, vmax=high)
            else:
                ax.text(0.5, 0.5, "missing", color="gray", ha="center", va="center", transform=ax.transAxes)
            if row == 0:
                ax.set_title(sequence, color="white", fontsize=9)
            if col == 0:
                label = f"{exam.site}\n{kinds[index]} t{exam.timepoint:g}"
                ax.set_ylabel(label, color="white", fontsize=8)
    return _save(fig, path, dpi=100)


def plot_reconstruction(
    image: np.ndarray, masked: np.ndarray, reconstruction: np.ndarray, names: Sequence[str], path: str | Path
) -> Path:
    """What pretraining learns: per sequence (rows), the input, what the encoder saw (hidden patches
    black) and the decoder's reconstruction, on the middle axial slice.

    Args:
        image, masked, reconstruction: ``[C, X, Y, Z]`` (``masked`` is 1 where a patch was hidden).
        names: the C sequence names.
        path: the PNG to write (atomically).
    """
    z = image.shape[-1] // 2
    columns = ("input", "seen by the encoder", "reconstruction")
    fig = Figure(figsize=(6.6, 2.2 * len(names)), facecolor="black")
    axes = fig.subplots(len(names), 3, squeeze=False)
    for row, name in enumerate(names):
        panels = (image[row], np.where(masked[row] > 0.5, np.nan, image[row]), reconstruction[row])
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(display_slice(panel, 2, z), cmap="gray", vmin=-3, vmax=3)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if row == 0:
                ax.set_title(columns[col], color="white", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, color="white", fontsize=10)
    return _save(fig, path, dpi=90)
