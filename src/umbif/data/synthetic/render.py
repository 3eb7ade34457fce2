"""From tissue and lesion maps to MRI: per-sequence contrast on the MNI grid, then a site's
acquisition in the subject's own space (voxel size, slice thickness, orientation, bias field,
Rician noise, intensity scale, int16 storage).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from umbif.data.synthetic.anatomy import Subject, Template, per_template, smooth_noise
from umbif.data.synthetic.sites import Geometry, Site

# Relative signal of each tissue / compartment per sequence (T1 white matter = 1). Orders follow
# clinical MRI and are checked against the real UPENN-GBM exam in the tests (tumour values tuned to
# its class medians relative to white matter): T1 WM > GM > CSF;
# T2 CSF > GM > WM; FLAIR GM > WM > CSF (fluid suppressed), oedema and tumour bright on T2/FLAIR,
# enhancing rim bright on T1c only; calcification dark on T2/FLAIR; scalp fat bright on T1.
# fmt: off
CONTRAST: dict[str, dict[str, float]] = {
    "t1": {
        "gm": 0.68, "wm": 1.0, "csf": 0.22, "skull": 0.08, "scalp": 1.15, "necrosis": 0.3, "enhancing": 0.9,
        "nonenhancing": 0.6, "oedema": 0.78, "calcification": 0.85, "cavity": 0.2, "wmh": 0.8, "infarct": 0.22,
        "gliosis": 0.55, "meningioma": 0.66,
    },
    "t1c": {
        "gm": 0.68, "wm": 1.0, "csf": 0.22, "skull": 0.08, "scalp": 1.15, "necrosis": 0.3, "enhancing": 1.8,
        "nonenhancing": 0.62, "oedema": 0.7, "calcification": 0.85, "cavity": 0.2, "wmh": 0.8, "infarct": 0.22,
        "gliosis": 0.6, "meningioma": 1.4,
    },
    "t2": {
        "gm": 0.58, "wm": 0.4, "csf": 1.2, "skull": 0.06, "scalp": 0.8, "necrosis": 1.05, "enhancing": 0.6,
        "nonenhancing": 0.9, "oedema": 0.88, "calcification": 0.15, "cavity": 1.2, "wmh": 0.85, "infarct": 1.2,
        "gliosis": 0.85, "meningioma": 0.62,
    },
    "flair": {
        "gm": 0.62, "wm": 0.46, "csf": 0.12, "skull": 0.05, "scalp": 0.75, "necrosis": 0.6, "enhancing": 0.8,
        "nonenhancing": 0.95, "oedema": 1.0, "calcification": 0.2, "cavity": 0.14, "wmh": 1.0, "infarct": 0.14,
        "gliosis": 1.0, "meningioma": 0.65,
    },
}
# fmt: on
TISSUES = ("gm", "wm", "csf", "skull", "scalp")
MISMATCH_FLAIR = 0.42  # FLAIR signal of a mismatch core: suppressed like fluid, unlike its T2 signal
VESSEL_ENHANCEMENT = 0.9  # T1c signal added in dura, venous sinuses and cortical vessels


@per_template
def _dura_and_sinus(template: Template) -> np.ndarray:
    """The enhancing structures every head has: the dura just outside the brain and the superior
    sagittal sinus along the midline."""
    outside_band = (template.depth == 0) & (template.csf > 0.3) & ~template.brain
    dura = ndimage.gaussian_filter(outside_band.astype(np.float32), 0.5) * 0.5
    x_mm = np.arange(template.brain.shape[0]) * template.affine[0, 0] + template.affine[0, 3]
    z_mm = np.arange(template.brain.shape[2]) * template.affine[2, 2] + template.affine[2, 3]
    midline = (np.abs(x_mm)[:, None, None] < 3.0) & (z_mm[None, None, :] > 10)
    return np.clip(dura + (midline & outside_band), 0, 1).astype(np.float32)


def vessels(template: Template, rng: np.random.Generator) -> np.ndarray:
    """Where T1c enhances without disease: the dura, the superior sagittal sinus, and cortical
    vessels scattered in the sulci (a new pattern per exam)."""
    sulcal = (smooth_noise(template.brain.shape, 0.7, rng) > 2.0) & (template.csf > 0.5) & template.brain
    return np.clip(_dura_and_sinus(template) + 0.8 * sulcal, 0, 1).astype(np.float32)


def render(
    tissues: dict[str, np.ndarray], lesions: dict[str, np.ndarray], sequence: str, vessel_map: np.ndarray | None
) -> np.ndarray:
    """Noise-free signal of one sequence on the MNI grid (T1 white matter = 1)."""
    table = CONTRAST[sequence]
    lesion_names = [n for n in table if n not in TISSUES and n in lesions]
    occupied = np.clip(sum(lesions[n] for n in lesion_names), 0, 1)
    image = sum(tissues[t] * table[t] for t in TISSUES) * (1 - occupied)
    for name in lesion_names:
        value = table[name]
        if name == "nonenhancing" and sequence == "flair" and "mismatch" in lesions:
            value = value + (MISMATCH_FLAIR - value) * lesions["mismatch"]
        image = image + lesions[name] * value
    if "texture" in lesions:
        image = image * (1 + 0.18 * lesions["texture"])
    if sequence == "t1c" and vessel_map is not None:
        image = image + VESSEL_ENHANCEMENT * vessel_map * (1 - occupied)
    return image.astype(np.float32)


def apply_contrast(image: np.ndarray, brain: np.ndarray, contrast: float) -> np.ndarray:
    """Scale tissue contrast around the brain's mean signal (1.5T-like scanners have less)."""
    mean = float(image[brain].mean())
    return np.clip(mean + contrast * (image - mean), 0, None)


def acquisition_grid(geometry: Geometry, spacing: float, centre: np.ndarray, fov_mm: np.ndarray):
    """Affine (voxel -> subject world mm, RAS) and shape of one acquisition covering ``fov_mm``."""
    voxel = np.asarray(geometry.voxel) * spacing
    axes = np.eye(3)
    if geometry.orientation in ("lps", "oblique"):
        axes = np.diag([-1.0, -1.0, 1.0])
    if geometry.orientation == "oblique":
        angle = np.deg2rad(geometry.tilt_deg)
        tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
        axes = tilt @ axes
    shape = np.ceil(fov_mm / voxel).astype(int)
    matrix = axes @ np.diag(voxel)
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = centre - matrix @ ((shape - 1) / 2)
    return affine, tuple(int(n) for n in shape)


def sample(
    volumes: list[np.ndarray],
    template: Template,
    subject: Subject,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    geometry: Geometry,
    order: int = 1,
) -> list[np.ndarray]:
    """Values of MNI-grid volumes at every voxel of an acquisition grid of the subject.

    Thick slices (slice thickness above the in-plane size) average two positions a quarter of a
    slice either side of the centre, a simple slice profile. The subject's smooth warp is evaluated
    once at the slice centres and shifted with the linear part only: the warp changes little over
    a quarter slice, and evaluating it is the costliest step.
    """
    thick = geometry.voxel[geometry.slice_axis] > min(geometry.voxel) * 1.2 and order > 0
    offsets = (-0.25, 0.25) if thick else (0.0,)
    to_voxel = np.linalg.inv(template.affine)
    mni = subject.grid_to_mni(affine, shape)  # [N, 3] mm
    out = [np.zeros(len(mni), dtype=np.float32) for _ in volumes]
    for offset in offsets:
        shift = subject.linear @ (affine[:3, geometry.slice_axis] * offset)
        coords = ((mni + shift) @ to_voxel[:3, :3].T + to_voxel[:3, 3]).T
        for k, volume in enumerate(volumes):
            out[k] += ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0) / len(offsets)
    return [o.reshape(shape) for o in out]


def bias_field(shape: tuple[int, int, int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field: exp of a random quadratic over the field of view."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = (x, y, z, x * x, y * y, z * z, x * y, y * z, x * z)
    log_field = sum(c * t for c, t in zip(rng.normal(0, 1, len(terms)), terms, strict=True))
    return np.exp(amplitude * log_field / 2.0).astype(np.float32)


def finish(signal: np.ndarray, site: Site, rng: np.random.Generator) -> np.ndarray:
    """Bias field, Rician noise and the site's intensity scale; stored as int16."""
    biased = signal * bias_field(signal.shape, site.bias, rng)
    real = biased + site.noise * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = site.noise * rng.standard_normal(signal.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    return np.clip(np.round(magnitude * site.scale), 0, 32767).astype(np.int16)
