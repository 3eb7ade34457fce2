"""One exam from NIfTI files to a normalised, fixed-shape array on a RAS grid.

    read + check header -> resample every sequence onto one axis-aligned RAS grid (default 2 mm)
    -> brain mask (given, or automatic) -> z-score inside the mask -> crop/pad around the brain

Resampling into a RAS-aligned grid through each file's full affine does the reorientation too, so
LPS, oblique and anisotropic inputs all land on the same grid. Sequences are assumed co-registered
(as in BraTS-style data); umbif does not register them, but it refuses sequences whose fields of
view barely overlap, the usual sign of a wrong affine, a brain mask or segmentation that lies
outside the images' field of view, and a mask of probabilities instead of labels. The memory an
exam needs is estimated from its grid and checked against the free memory before the grid is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data.io import ImageError, Volume, read_nifti
from umbif.data.manifest import Exam

PREPROCESS_VERSION = "1"  # bump when the algorithm changes, so every cache entry is rebuilt
MAX_OUTSIDE = 0.01  # share of a mask's labelled voxels that may lie outside the grid (edge voxels)
_COPIES = 4  # float32 copies of the resampled grid alive at once (stack, z-scored, temporaries)
_LPS = np.diag([-1.0, -1.0, 1.0])  # ITK's world frame is LPS, nibabel's is RAS
# voxel types SimpleITK takes as they are; interpolation is done in floating point either way
_SITK_TYPES = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")}


@dataclass
class Preprocessed:
    """The result for one exam.

    ``image`` holds the present sequences only, in canonical order (see ``sequences``); ``masks``
    is ``[2, X, Y, Z]`` uint8: channel 0 the brain mask (0/1), channel 1 the tumour segmentation
    labels as given (all 0 when the exam has none). ``affine`` maps output voxels to RAS mm.
    """

    image: np.ndarray  # [P, X, Y, Z] float32
    sequences: tuple[str, ...]
    masks: np.ndarray  # [2, X, Y, Z] uint8
    affine: np.ndarray  # [4, 4]
    has_seg: bool
    mask_source: str  # "manifest" or "auto"
    brain_clipped: float  # fraction of the brain outside the output grid (0 when it fits)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # per sequence: input mean/std in mask


def _corners(volume_shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World (RAS) coordinates of the 8 corner voxel centres: [8, 3]."""
    idx = np.array(list(product(*[(0, n - 1) for n in volume_shape[:3]])), dtype=np.float64)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _overlap(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """Intersection volume over the smaller box's volume, for boxes given as [2, 3] (min, max)."""
    inter = np.clip(np.minimum(box_a[1], box_b[1]) - np.maximum(box_a[0], box_b[0]), 0, None).prod()
    smaller = min(np.prod(box_a[1] - box_a[0]), np.prod(box_b[1] - box_b[0]))
    return float(inter / smaller) if smaller > 0 else 0.0


def target_grid(volumes: list[Volume], config: PreprocessConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The RAS-aligned grid at ``config.spacing`` that covers every volume's field of view.

    Returns:
        (affine [4, 4], shape (X, Y, Z)).

    Raises:
        ImageError: a volume covers less than ``config.min_overlap`` of the first one (wrong affine).
    """
    boxes = []
    for volume in volumes:
        corners = _corners(volume.data.shape, volume.affine)
        boxes.append(np.stack([corners.min(0), corners.max(0)]))
    for volume, box in zip(volumes[1:], boxes[1:], strict=True):
        overlap = _overlap(boxes[0], box)
        if overlap < config.min_overlap:
            raise ImageError(
                f"{volume.path}: covers only {overlap:.0%} of the field of view of {volumes[0].path.name}; "
                "the sequences are not co-registered or one affine is wrong"
            )
    low = np.min([b[0] for b in boxes], axis=0)
    high = np.max([b[1] for b in boxes], axis=0)
    spacing = np.asarray(config.spacing, dtype=np.float64)
    shape = tuple(int(n) for n in np.floor((high - low) / spacing + 1e-6).astype(int) + 1)
    if int(np.prod(shape)) > config.max_voxels:
        raise ImageError(
            f"{volumes[0].path}: the sequences span {np.round(high - low).tolist()} mm, too large a grid "
            f"({shape}) at {config.spacing} mm; check the affines"
        )
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = low
    return affine, shape  # type: ignore[return-value]


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def memory_estimate(channels: int, grid_shape: tuple[int, ...], shape: tuple[int, ...]) -> int:
    """Bytes :func:`preprocess_exam` allocates for ``channels`` sequences on a ``grid_shape`` grid cropped
    to ``shape``: float32 copies of the grid, its masks, and the float32 + float16 output."""
    grid, out = int(np.prod(grid_shape)), int(np.prod(shape))
    return _COPIES * channels * grid * 4 + 4 * grid + channels * out * 6 + 2 * out


def check_memory(exam_id: str, channels: int, grid_shape: tuple[int, ...], shape: tuple[int, ...]) -> None:
    """Raise :class:`ImageError` before allocating when the exam would need more than the free memory."""
    need, free = memory_estimate(channels, grid_shape, shape), available_memory()
    if free is not None and need > free:
        raise ImageError(
            f"exam {exam_id}: preprocessing needs about {need / 2**30:.1f} GiB ({channels} sequences on a "
            f"{'x'.join(map(str, grid_shape))} grid) but {free / 2**30:.1f} GiB are free; use fewer --workers, "
            "a coarser spacing, or check the headers (a corrupt one can claim a huge field of view)"
        )


def mask_labels(volume: Volume, what: str, labelled: bool = True) -> np.ndarray:
    """The integer values of a brain mask (``labelled=False``: any integer, non-zero is brain) or of a
    segmentation (integer labels 0..255), checked.

    Raises:
        ImageError: values that are not integers (a map of values between 0 and 1 is named a
            probability map: threshold it first), or segmentation labels outside 0..255.
    """
    data = volume.data
    labels = data if np.issubdtype(data.dtype, np.integer) else np.round(data)
    off = np.abs(labels - data) > 1e-3 if labels is not data else np.zeros((), dtype=bool)
    if off.any():
        example = float(data[off].flat[0])
        kind = (
            "probabilities (values between 0 and 1" if data.min() >= 0 and data.max() <= 1 else "non-integer values ("
        )
        raise ImageError(
            f"{volume.path}: the {what} holds {kind} such as {example:.3g}), not labels; threshold it "
            "(e.g. at 0.5) and save integer labels"
        )
    if labelled and (labels.min() < 0 or labels.max() > 255):
        raise ImageError(f"{volume.path}: a {what} must hold labels 0..255, found {labels.min()}..{labels.max()}")
    return labels


def check_inside(
    volume: Volume, labels: np.ndarray, grid_affine: np.ndarray, grid_shape: tuple[int, ...], what: str
) -> None:
    """Raise :class:`ImageError` when more than :data:`MAX_OUTSIDE` of a mask's labelled voxels lie outside
    the images' grid: its affine does not match the images (shifted, flipped, another subject's)."""
    index = np.argwhere(labels > 0)  # [N, 3]
    if not len(index):
        return
    index = index[:: max(1, len(index) // 100_000)]  # a sample is enough for a share
    world = index @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    grid = (world - grid_affine[:3, 3]) / np.diag(grid_affine)[:3]  # continuous grid index
    inside = np.all((grid >= -1.0) & (grid <= np.asarray(grid_shape)), axis=1)
    outside = 1.0 - float(inside.mean())
    if outside > MAX_OUTSIDE:
        raise ImageError(
            f"{volume.path}: {outside:.0%} of the {what}'s labelled voxels lie outside the images' field of view; "
            "its affine does not match the images (shifted or flipped?) — check that it belongs to this exam"
        )


def _to_sitk(data: np.ndarray, affine: np.ndarray, path: object) -> sitk.Image:
    """A SimpleITK image of a RAS-affine array; ITK index (x, y, z) is numpy (i, j, k)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    matrix = _LPS @ affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ImageError(f"{path}: the affine is sheared (axes not orthogonal); resample it to an orthogonal grid")
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin((_LPS @ affine[:3, 3]).tolist())
    return image


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    grid_affine: np.ndarray,
    grid_shape: tuple[int, int, int],
    nearest: bool = False,
    outside: float = float("nan"),
    path: object = "<array>",
) -> np.ndarray:
    """Resample ``data`` (voxel -> RAS ``affine``) onto a RAS-aligned grid with SimpleITK.

    Linear interpolation for images, nearest neighbour for label maps; voxels outside the input's
    field of view get ``outside`` (NaN by default, so they can be told apart from dark tissue).

    Returns:
        [X, Y, Z] float32 array on the grid.
    """
    if data.dtype not in _SITK_TYPES:
        data = data.astype(np.float32)
    moving = _to_sitk(data, affine, path)
    reference = sitk.Image([int(n) for n in grid_shape], sitk.sitkFloat32)
    reference.SetSpacing(np.diag(grid_affine)[:3].tolist())
    reference.SetDirection(_LPS.flatten().tolist())
    reference.SetOrigin((_LPS @ grid_affine[:3, 3]).tolist())
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(moving, reference, sitk.Transform(), interpolator, outside, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def _otsu_threshold(channel: np.ndarray) -> float | None:
    """Otsu threshold of a channel's finite voxels (SimpleITK), None when it has none.

    Large volumes are sampled at every second voxel per axis: the histogram of an eighth of the
    voxels gives the same threshold at an eighth of the cost (the slowest step of preprocessing).
    """
    sample = channel[::2, ::2, ::2] if channel.size >= 64**3 else channel
    finite = np.isfinite(sample)
    if not finite.any():
        return None
    sample = np.where(finite, sample, sample[finite].min()).astype(np.float32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.GetImageFromArray(sample))
    return float(otsu.GetThreshold())


def auto_brain_mask(image: np.ndarray) -> np.ndarray:
    """A foreground mask from the image itself, for exams without a given brain mask.

    Union of per-sequence Otsu foregrounds, closed, largest connected component, holes filled.
    On skull-stripped data (BraTS, UCSF-PDGM, UPENN-GBM) this is the brain; on data with skull it
    is the head, so give real brain masks (e.g. from HD-BET or SynthStrip) in the manifest there.

    Args:
        image: [P, X, Y, Z], NaN outside the field of view.

    Returns:
        [X, Y, Z] bool.
    """
    foreground = np.zeros(image.shape[1:], dtype=bool)
    for channel in image:
        threshold = _otsu_threshold(channel)
        if threshold is not None:
            foreground |= channel > threshold  # NaN compares False: outside the field of view
    foreground = ndimage.binary_closing(foreground, structure=np.ones((3, 3, 3)), iterations=2)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return foreground
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    box = ndimage.find_objects(largest.astype(np.uint8))[0]
    largest[box] = ndimage.binary_fill_holes(largest[box])  # same result, done in the bounding box
    return largest


def zscore_in_mask(
    image: np.ndarray, mask: np.ndarray, names: tuple[str, ...], zero_outside: bool
) -> tuple[np.ndarray, dict]:
    """Per channel: subtract the mean and divide by the std of the finite voxels inside ``mask``.

    Returns:
        (normalised [P, X, Y, Z] with non-finite voxels set to 0, {name: {"mean", "std"}} of the input).

    Raises:
        ImageError: a channel is constant (or absent) inside the mask.
    """
    out = np.empty_like(image)
    stats = {}
    for c, (channel, name) in enumerate(zip(image, names, strict=True)):
        finite = np.isfinite(channel)
        values = channel[mask & finite].astype(np.float64)
        std = float(values.std()) if values.size else 0.0
        if values.size < 10 or std <= 1e-6 * max(1.0, float(np.abs(values).max(initial=0.0))):
            raise ImageError(
                f"sequence {name}: constant or empty inside the brain mask; the image or the mask is wrong"
            )
        mean = float(values.mean())
        normalised = (channel - mean) / std
        keep = finite & mask if zero_outside else finite
        out[c] = np.where(keep, normalised, 0.0)
        stats[name] = {"mean": mean, "std": std}
    return out, stats


def crop_window(mask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Start index per axis of a ``shape`` window centred on the mask's bounding box (may be < 0)."""
    if not mask.any():
        raise ImageError("the brain mask is empty; the image is blank or the given mask does not overlap it")
    coords = np.nonzero(mask)
    centre = np.array([(c.min() + c.max()) / 2.0 for c in coords])
    return np.floor(centre - (np.asarray(shape) - 1) / 2.0 + 0.5).astype(int)


def crop_or_pad(array: np.ndarray, start: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``array[..., start:start+shape]`` with zero padding where the window leaves the array."""
    out = np.zeros(array.shape[:-3] + tuple(shape), dtype=array.dtype)
    src, dst = [], []
    for begin, size, full in zip(start, shape, array.shape[-3:], strict=True):
        lo, hi = max(begin, 0), min(begin + size, full)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - begin, hi - begin))
    out[(..., *dst)] = array[(..., *src)]
    return out


def preprocess_exam(exam: Exam, config: PreprocessConfig | None = None) -> Preprocessed:
    """Run the whole preprocessing of one exam (see the module docstring).

    Raises:
        ImageError: any file of the exam is unusable; the message names it.
    """
    config = config or PreprocessConfig()
    names = tuple(s for s in SEQUENCES if s in exam.sequences)
    if not names:
        raise ImageError(f"exam {exam.exam_id}: no sequence file given")
    volumes = [read_nifti(exam.sequences[name], config) for name in names]
    grid_affine, grid_shape = target_grid(volumes, config)
    check_memory(exam.exam_id, len(names), grid_shape, config.shape)
    image = np.stack(
        [resample(v.data, v.affine, grid_affine, grid_shape, path=v.path) for v in volumes]
    )  # [P, X, Y, Z], NaN outside each field of view

    if exam.brain_mask is not None:
        given = read_nifti(exam.brain_mask, config)
        labels = mask_labels(given, "brain mask", labelled=False)
        check_inside(given, labels, grid_affine, grid_shape, "brain mask")
        brain = resample(labels, given.affine, grid_affine, grid_shape, nearest=True, outside=0, path=given.path) > 0
        mask_source = "manifest"
    else:
        brain = auto_brain_mask(image)
        mask_source = "auto"
    try:
        image, stats = zscore_in_mask(image, brain, names, config.zero_outside_mask)
    except ImageError as err:
        raise ImageError(f"exam {exam.exam_id}: {err}") from None

    seg = np.zeros(grid_shape, dtype=np.uint8)
    if exam.seg is not None:
        given = read_nifti(exam.seg, config)
        labels = mask_labels(given, "segmentation")
        check_inside(given, labels, grid_affine, grid_shape, "segmentation")
        seg = resample(labels, given.affine, grid_affine, grid_shape, nearest=True, outside=0, path=given.path)
        seg = seg.astype(np.uint8)

    try:
        start = crop_window(brain, config.shape)
    except ImageError as err:
        raise ImageError(f"exam {exam.exam_id}: {err}") from None
    brain_out = crop_or_pad(brain, start, config.shape)
    affine = grid_affine.copy()
    affine[:3, 3] = grid_affine[:3, 3] + start * np.asarray(config.spacing)
    return Preprocessed(
        image=crop_or_pad(image, start, config.shape),
        sequences=names,
        masks=np.stack([brain_out.astype(np.uint8), crop_or_pad(seg, start, config.shape)]),
        affine=affine,
        has_seg=exam.seg is not None,
        mask_source=mask_source,
        brain_clipped=float(1.0 - brain_out.sum() / brain.sum()),
        stats=stats,
    )
