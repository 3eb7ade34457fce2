"""Lesions drawn on the MNI grid as partial-volume maps (float32 in [0, 1], summing to <= 1):
gliomas with their compartments, and the findings of a routine archive (white-matter
hyperintensities, chronic infarcts, extra-axial masses). The renderer turns maps into intensities;
:func:`segmentation` turns glioma maps into BraTS labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from umbif.data.synthetic.anatomy import Template, per_template, smooth_noise

# BraTS 2021 label convention: 1 necrosis / non-enhancing core, 2 oedema, 4 enhancing tumour
BRATS_LABELS = {"necrosis": 1, "nonenhancing": 1, "oedema": 2, "enhancing": 4}
LESION_MAPS = (
    "necrosis",
    "enhancing",
    "nonenhancing",
    "oedema",
    "calcification",
    "cavity",
    "wmh",
    "infarct",
    "gliosis",
    "meningioma",
)

# lobes as MNI boxes (mm), enough to place a tumour centre in the right region
FRONTAL = {"y": (8.0, 60.0), "z": (-10.0, 60.0)}
NON_FRONTAL = {"y": (-85.0, 5.0), "z": (-30.0, 55.0)}


@dataclass(frozen=True)
class Glioma:
    """What the renderer needs to draw one glioma (one exam's state of it)."""

    centre_mm: tuple[float, float, float]  # MNI
    volume_ml: float  # tumour core (enhancing + necrotic + non-enhancing), before its soft margin
    enhancing: float  # fraction of the core that enhances (0-1; with necrosis scaled to <= 0.95)
    necrosis: float  # fraction of the core that is necrotic (0-1)
    sharpness: float  # 0 (infiltrative) - 1 (crisp)
    oedema: float  # oedema extent beyond the core, in core radii
    heterogeneity: float  # 0-1
    mismatch: bool  # T2-FLAIR mismatch
    calcification: bool
    nodularity: float = 1.0  # enhancement pattern: 1 solid/nodular, 0 feathery, patchy
    cavity: float = 0.0  # resection cavity radius as a fraction of the core radius (follow-up exams)


def empty_maps(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, dtype=np.float32) for name in LESION_MAPS}


def _box(template: Template, centre_mm: np.ndarray, radius_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Slices of the MNI grid around a sphere, and the mm coordinates [3, ...] of the box voxels."""
    inverse = np.linalg.inv(template.affine)
    centre = inverse[:3, :3] @ centre_mm + inverse[:3, 3]
    half = radius_mm / template.spacing + 2
    shape = template.brain.shape
    box = tuple(
        slice(int(max(0, np.floor(c - half))), int(min(n, np.ceil(c + half) + 1)))
        for c, n in zip(centre, shape, strict=True)
    )
    index = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")).astype(np.float32)
    mm = np.einsum("ij,j...->i...", template.affine[:3, :3], index) + template.affine[:3, 3, None, None, None]
    return box, mm


@per_template
def _white_matter_points(template: Template) -> tuple[np.ndarray, np.ndarray]:
    """MNI mm [N, 3] and depth [N] of white-matter voxels."""
    index = np.argwhere(template.wm > 0.6)
    return index * template.spacing + template.affine[:3, 3], template.depth[tuple(index.T)]


def pick_centre(
    template: Template, frontal: bool, cortical: bool, rng: np.random.Generator, radius_mm: float = 15.0
) -> np.ndarray:
    """An MNI point (mm) in white matter, in or out of the frontal lobe, for a tumour of ``radius_mm``
    that reaches the cortex (centre shallower than 0.8 radii) or stays deep (more than a radius
    plus 4 mm from the surface; the deepest tenth of the region when no point is that deep)."""
    region = FRONTAL if frontal else NON_FRONTAL
    mm, depth = _white_matter_points(template)
    inside = (
        (mm[:, 1] >= region["y"][0])
        & (mm[:, 1] <= region["y"][1])
        & (mm[:, 2] >= region["z"][0])
        & (mm[:, 2] <= region["z"][1])
        & (np.abs(mm[:, 0]) > 12)  # off the midline
    )
    keep = inside & ((depth < 0.8 * radius_mm) if cortical else (depth > radius_mm + 4.0))
    if not keep.any():
        cut = np.quantile(depth[inside], 0.1 if cortical else 0.9)
        keep = inside & ((depth <= cut) if cortical else (depth >= cut))
    candidates = mm[keep]
    return candidates[rng.integers(len(candidates))]


def draw_glioma(template: Template, maps: dict[str, np.ndarray], glioma: Glioma, rng: np.random.Generator) -> None:
    """Add a glioma's compartments to ``maps`` (in place)."""
    radius = (3 * glioma.volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    reach = radius * (1 + glioma.oedema) + 10
    centre = np.asarray(glioma.centre_mm, dtype=np.float32)
    box, mm = _box(template, centre, reach)
    shape = mm.shape[1:]
    sigma = max(1.0, 6.0 / template.spacing)
    lobes = 1 + 0.18 * smooth_noise(shape, sigma, rng)  # lobulated outline
    distance = np.sqrt(((mm - centre[:, None, None, None]) ** 2).sum(0)) / (radius * lobes)  # 1 at the border
    brain = template.brain[box] | (template.csf[box] > 0.5)
    width = 0.6 + 5.0 * (1 - glioma.sharpness)  # border width in mm: infiltrative tumours fade out

    def inside(level: float, edge_mm: float) -> np.ndarray:
        return expit((level - distance) * radius / edge_mm).astype(np.float32)

    core = inside(1.0, width) * brain
    # necrosis fills the centre, the enhancing shell lies around it: radii from volume fractions
    scale = min(1.0, 0.95 / max(glioma.necrosis + glioma.enhancing, 1e-6))  # leave some non-enhancing rim
    necrosis_fraction, enhancing_fraction = glioma.necrosis * scale, glioma.enhancing * scale
    necrosis_ratio = necrosis_fraction ** (1 / 3) if necrosis_fraction > 0.01 else 0.0
    enhancing_ratio = (necrosis_fraction + enhancing_fraction) ** (1 / 3)
    necrosis = inside(necrosis_ratio, 0.8) * core if necrosis_ratio else np.zeros_like(core)
    enhancing = np.clip(inside(enhancing_ratio, 0.8) * core - necrosis, 0, 1)
    # enhancement pattern: solid/nodular (1) or feathery and patchy (0)
    patches = smooth_noise(shape, max(0.7, 2.0 / template.spacing), rng)
    enhancing *= expit(3.0 * (patches + 1.5 * glioma.nodularity - 0.5)).astype(np.float32)
    if glioma.cavity > 0:
        cavity = inside(glioma.cavity, 0.8) * core
        enhancing *= 1 - cavity
        necrosis *= 1 - cavity
        maps["cavity"][box] = np.maximum(maps["cavity"][box], cavity)
    else:
        cavity = np.zeros_like(core)
    nonenhancing = np.clip(core - enhancing - necrosis - cavity, 0, 1)
    wm = template.wm[box]
    oedema = inside(1.0 + glioma.oedema, 4.0) * (0.35 + 0.65 * wm) * brain  # spreads along white matter
    oedema = np.clip(oedema - core, 0, 1)
    for name, layer in (
        ("necrosis", necrosis),
        ("enhancing", enhancing),
        ("nonenhancing", nonenhancing),
        ("oedema", oedema),
    ):
        maps[name][box] = np.maximum(maps[name][box], layer)
    if glioma.calcification:
        for _ in range(int(rng.integers(2, 6))):
            spot = centre + rng.normal(0, 0.35 * radius, 3)
            spot_distance = np.sqrt(((mm - spot[:, None, None, None]) ** 2).sum(0))
            dot = expit((rng.uniform(1.5, 2.8) - spot_distance) / 0.5).astype(np.float32) * core
            maps["calcification"][box] = np.maximum(maps["calcification"][box], dot)
    if glioma.heterogeneity > 0:
        texture = smooth_noise(shape, max(0.7, 2.5 / template.spacing), rng) * glioma.heterogeneity
        maps.setdefault("texture", np.zeros(template.brain.shape, dtype=np.float32))
        maps["texture"][box] += texture * (core + oedema)
    if glioma.mismatch:
        # T2-FLAIR mismatch: the non-enhancing core is dark on FLAIR except for a thin bright rim
        # (complete or near-complete in Patel 2017)
        maps.setdefault("mismatch", np.zeros(template.brain.shape, dtype=np.float32))
        maps["mismatch"][box] = np.maximum(maps["mismatch"][box], inside(0.92, 1.0) * nonenhancing)


def draw_wmh(template: Template, maps: dict[str, np.ndarray], count: int, rng: np.random.Generator) -> None:
    """Small white-matter hyperintensities, periventricular and deep (age-related small-vessel disease)."""
    index = np.argwhere((template.wm > 0.8) & (template.depth > 12))
    for _ in range(count):
        point = index[rng.integers(len(index))] * template.spacing + template.affine[:3, 3]
        radius = rng.uniform(2.0, 6.0)
        box, mm = _box(template, point, radius + 4)
        distance = np.sqrt(((mm - point[:, None, None, None]) ** 2).sum(0))
        blob = expit((radius * (1 + 0.25 * smooth_noise(distance.shape, 1.0, rng)) - distance) / 1.0)
        maps["wmh"][box] = np.maximum(maps["wmh"][box], blob.astype(np.float32) * template.wm[box])


def draw_infarct(template: Template, maps: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """A chronic cortical-subcortical infarct: a CSF-like cavity with a gliotic rim."""
    index = np.argwhere((template.gm > 0.5) & (template.depth < 6) & (template.depth > 0))
    point = index[rng.integers(len(index))] * template.spacing + template.affine[:3, 3]
    radius = rng.uniform(7.0, 16.0)
    box, mm = _box(template, point, radius + 8)
    distance = np.sqrt(((mm - point[:, None, None, None]) ** 2).sum(0)) / (
        radius * (1 + 0.2 * smooth_noise(mm.shape[1:], 1.5, rng))
    )
    brain = template.brain[box].astype(np.float32)
    cavity = expit((0.75 - distance) * radius / 1.0).astype(np.float32) * brain
    rim = np.clip(expit((1.0 - distance) * radius / 1.5).astype(np.float32) * brain - cavity, 0, 1)
    maps["infarct"][box] = np.maximum(maps["infarct"][box], cavity)
    maps["gliosis"][box] = np.maximum(maps["gliosis"][box], rim)


def draw_meningioma(template: Template, maps: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """An extra-axial, dura-based mass over the convexity or the falx that pushes into the brain."""
    index = np.argwhere(template.brain & (template.depth <= template.spacing))
    mm_all = index * template.spacing + template.affine[:3, 3]
    upper = mm_all[mm_all[:, 2] > 0]
    surface = upper[rng.integers(len(upper))]
    radius = rng.uniform(8.0, 18.0)
    outward = surface - np.array([0.0, -15.0, 15.0])
    centre = surface + outward / np.linalg.norm(outward) * radius * 0.3  # mostly outside the brain
    box, mm = _box(template, centre, radius + 4)
    distance = np.sqrt(((mm - centre[:, None, None, None]) ** 2).sum(0))
    mass = expit((radius - distance) / 0.8).astype(np.float32)
    inside_head = (template.brain[box] | (template.csf[box] > 0.3)).astype(np.float32)
    maps["meningioma"][box] = np.maximum(maps["meningioma"][box], mass * inside_head)


def segmentation(maps: dict[str, np.ndarray]) -> np.ndarray:
    """BraTS 2021 labels (0, 1, 2, 4) of the glioma compartments: the dominant compartment where
    the tumour (all compartments together) fills at least half of a voxel."""
    names = list(BRATS_LABELS)
    stack = np.stack([maps[n] for n in names])
    labels = np.array([BRATS_LABELS[n] for n in names], dtype=np.uint8)
    seg = labels[np.argmax(stack, axis=0)]
    return np.where(stack.sum(0) >= 0.5, seg, 0).astype(np.uint8)
