"""Real anatomy for the synthetic cohort: the MNI152 2009a template that ships inside nilearn (T1,
grey- and white-matter probability maps, brain mask; loaded offline), a head around it, and a
per-subject smooth deformation, scaling and age-related atrophy.

Tissue maps live on the template grid ("MNI space"); a subject is a mapping from its own world
coordinates (mm) back into MNI space, so lesions drawn in MNI space deform with the anatomy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import TypeVar

import numpy as np
from scipy import ndimage

# head layers outside the brain mask, as distance bands in mm (subarachnoid CSF/dura, skull, scalp)
CSF_SHELL_MM = (0.0, 2.5)
SKULL_MM = (2.5, 9.0)
SCALP_MM = (9.0, 14.0)
VENTRICLE_CENTRE_MNI = np.array([0.0, -12.0, 18.0])  # mm, between the lateral ventricles
T = TypeVar("T")


@dataclass(frozen=True)
class Template:
    """Tissue probabilities on the MNI grid (each [X, Y, Z] float32 in [0, 1])."""

    affine: np.ndarray  # [4, 4] voxel -> MNI mm
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray  # brain mask minus GM minus WM, plus the subarachnoid shell outside the mask
    brain: np.ndarray  # bool brain mask
    skull: np.ndarray
    scalp: np.ndarray
    depth: np.ndarray  # mm from the brain surface (0 outside the brain)

    @property
    def spacing(self) -> float:
        return float(self.affine[0, 0])


@lru_cache(maxsize=3)
def load_template(resolution: int = 2) -> Template:
    """The MNI152 2009a maps from nilearn at 1, 2 or 4 mm (4 mm: the 2 mm maps averaged in 2x2x2
    blocks, for quick low-resolution cohorts), with CSF and head layers derived from them."""
    from nilearn import datasets  # heavy import, only where the template is needed

    if resolution not in (1, 2, 4):
        raise ValueError(f"template resolution must be 1, 2 or 4 mm, got {resolution}")

    def data(image) -> np.ndarray:
        return np.asarray(image.dataobj, dtype=np.float32)

    source = min(resolution, 2)
    gm = data(datasets.load_mni152_gm_template(resolution=source))
    wm = data(datasets.load_mni152_wm_template(resolution=source))
    mask_image = datasets.load_mni152_brain_mask(resolution=source)
    brain = data(mask_image)
    affine = np.asarray(mask_image.affine, dtype=np.float64)
    if resolution == 4:
        gm, wm, brain = (_coarsen(v) for v in (gm, wm, brain))
        affine = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] += affine[:3, :3] @ np.full(3, 0.25)  # a block's centre: half a fine voxel in
    brain = brain > 0.5
    spacing = float(affine[0, 0])
    gm, wm = gm * brain, wm * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    outside = ndimage.distance_transform_edt(~brain) * spacing  # mm from the brain, outside it
    depth = (ndimage.distance_transform_edt(brain) * spacing).astype(np.float32)
    csf = csf + ((outside > CSF_SHELL_MM[0]) & (outside <= CSF_SHELL_MM[1])).astype(np.float32)
    skull = ((outside > SKULL_MM[0]) & (outside <= SKULL_MM[1])).astype(np.float32)
    scalp = ((outside > SCALP_MM[0]) & (outside <= SCALP_MM[1])).astype(np.float32)
    smooth = 0.6 / spacing  # soften the band edges to partial volumes
    return Template(
        affine=affine,
        gm=gm,
        wm=wm,
        csf=np.clip(ndimage.gaussian_filter(csf, smooth), 0, 1),
        brain=brain,
        skull=ndimage.gaussian_filter(skull, smooth),
        scalp=ndimage.gaussian_filter(scalp, smooth),
        depth=depth,
    )


def _coarsen(volume: np.ndarray) -> np.ndarray:
    """Mean over 2x2x2 blocks (an odd last slice is dropped)."""
    x, y, z = (n // 2 for n in volume.shape)
    return volume[: 2 * x, : 2 * y, : 2 * z].reshape(x, 2, y, 2, z, 2).mean(axis=(1, 3, 5))


def per_template(compute: Callable[[Template], T]) -> Callable[[Template], T]:
    """Cache ``compute(template)`` for each template object (templates are loaded once per process by
    :func:`load_template` and live as long as it, so their ids stay theirs)."""
    cache: dict[int, T] = {}

    @wraps(compute)
    def cached(template: Template) -> T:
        if id(template) not in cache:
            cache[id(template)] = compute(template)
        return cache[id(template)]

    return cached


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


@dataclass(frozen=True)
class Subject:
    """Where a subject's world point (mm) sits in MNI space: ``mni = linear @ x + offset + warp(x)``.

    ``warp`` is a smooth displacement (mm) sampled on a coarse grid over the head.
    """

    linear: np.ndarray  # [3, 3]
    offset: np.ndarray  # [3]
    warp: np.ndarray  # [3, Gx, Gy, Gz] mm
    warp_origin: np.ndarray  # [3] world mm of warp[:, 0, 0, 0]
    warp_step: float  # mm between warp grid points
    atrophy: float  # 0..0.4, fraction of cortical GM turned to CSF

    def to_mni(self, points: np.ndarray) -> np.ndarray:
        """Map world points [N, 3] (subject mm) to MNI mm [N, 3]."""
        grid = ((points - self.warp_origin) / self.warp_step).T  # [3, N] in warp-grid units
        displacement = np.stack([ndimage.map_coordinates(c, grid, order=1, mode="nearest") for c in self.warp])
        return points @ self.linear.T + self.offset + displacement.T

    def grid_to_mni(self, affine: np.ndarray, shape: tuple[int, int, int], step_mm: float = 6.0) -> np.ndarray:
        """:meth:`to_mni` at every voxel of a grid (``affine``: voxel -> subject mm), as [N, 3] in C order.

        The warp is smooth (control points 12 mm apart), so it is evaluated on a sub-grid about
        ``step_mm`` apart and interpolated linearly, axis by axis, in between: three small matrix
        products instead of an interpolation at every voxel (the costliest step of rendering).
        """
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        nodes, weights = [], []
        for n, size in zip(shape, spacing, strict=True):
            node = np.unique(np.r_[np.arange(0, n, max(1, round(step_mm / size))), n - 1]).astype(np.float64)
            nodes.append(node)
            weights.append(np.stack([np.interp(np.arange(n), node, np.eye(len(node))[j]) for j in range(len(node))], 1))
        coarse = np.stack(np.meshgrid(*nodes, indexing="ij"), -1).reshape(-1, 3)
        world = coarse @ affine[:3, :3].T + affine[:3, 3]
        displacement = self.to_mni(world) - (world @ self.linear.T + self.offset)
        displacement = displacement.reshape(*(len(node) for node in nodes), 3)
        full = np.einsum("ia,jb,kc,abcd->ijkd", *weights, displacement, optimize=True).reshape(-1, 3)
        index = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"), -1)
        index = index.reshape(-1, 3)
        linear = affine[:3, :3].T @ self.linear.T
        return index @ linear + (affine[:3, 3] @ self.linear.T + self.offset) + full


def sample_subject(age: float, rng: np.random.Generator, warp_mm: float = 3.0) -> Subject:
    """A subject: head size and shape (global scaling and a small rotation), a smooth warp, and
    age-related atrophy (sulcal widening and ventricle enlargement grow after 40; Fotenos 2005)."""
    scale = rng.normal(1.0, 0.05) * np.exp(rng.normal(0, 0.03, 3))  # overall size, then per-axis shape
    angles = np.deg2rad(rng.normal(0, 3.0, 3))
    rotation = _rotation(angles)
    linear = np.linalg.inv(rotation @ np.diag(scale))  # subject mm -> MNI mm
    atrophy = float(np.clip((age - 40.0) / 110.0 + rng.normal(0, 0.04), 0.0, 0.4))

    step = 12.0
    origin = np.array([-110.0, -140.0, -90.0])
    shape = (19, 23, 19)  # covers +-110, -140..130, -90..130 mm
    warp = np.stack([smooth_noise(shape, 1.5, rng) * warp_mm for _ in range(3)])
    # ventricle enlargement: MNI points near the ventricles are pulled towards their centre, so the
    # (fixed-size) template ventricles cover more of the subject's space
    points = origin + step * np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    offset_to_centre = points - VENTRICLE_CENTRE_MNI
    falloff = np.exp(-(offset_to_centre**2).sum(-1) / (2 * 28.0**2))[..., None]
    warp = warp - np.moveaxis(offset_to_centre * falloff * 0.9 * atrophy, -1, 0)
    return Subject(linear, rng.normal(0, 2.0, 3), warp.astype(np.float32), origin, step, atrophy)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def tissue_maps(template: Template, subject: Subject) -> dict[str, np.ndarray]:
    """Subject-specific tissue probabilities on the MNI grid: cortical GM thinned by atrophy (into
    CSF), the head layers. The maps sum to at most 1 per voxel; the rest is air."""
    cortex = template.gm * (template.depth < 8.0)  # superficial GM thins with age, deep GM much less
    lost = cortex * subject.atrophy
    return {
        "gm": template.gm - lost,
        "wm": template.wm.copy(),
        "csf": template.csf + lost,
        "skull": template.skull,
        "scalp": template.scalp,
    }
