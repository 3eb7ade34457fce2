"""The sites of the synthetic archive: how each one names its files, acquires its images (voxel
size, slice thickness, orientation, field-strength-like contrast, bias field, noise, intensity
scale), which sequences it tends to miss, and how common IDH-mutant gliomas are in its population.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from umbif import SEQUENCES


@dataclass(frozen=True)
class Geometry:
    """One acquisition: voxel size as multiples of the base spacing, and orientation.

    ``orientation``: "ras" (voxel axes along R, A, S), "lps" (along L, P, S: DICOM-derived files),
    or "oblique" (LPS tilted by ``tilt_deg`` about the left-right axis, an angled axial stack).
    ``slice_axis`` is the voxel axis of the (possibly thick) slices.
    """

    voxel: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "ras"
    tilt_deg: float = 0.0
    slice_axis: int = 2


@dataclass(frozen=True)
class Site:
    name: str
    naming: str  # key of NAMINGS
    geometry: dict[str, Geometry]  # per sequence (and "seg": the grid the segmentation is written on)
    contrast: float  # tissue contrast relative to 3T (1.0); 1.5T-like scanners ~0.8
    bias: float  # amplitude of the multiplicative bias field (log units)
    noise: float  # Rician noise sigma relative to white matter on T1
    scale: float  # stored intensity of white matter on T1 (int16 units)
    missing: dict[str, float] = field(default_factory=dict)  # sequence -> probability it is absent
    idh_prevalence: float = 0.3
    skull_stripped: bool = False  # files distributed brain-extracted (BraTS, UPENN-GBM) or with the head


ISO = Geometry()
# File names per naming style: exam folder pattern and one stem per target. {p} patient number,
# {t} timepoint. Every name is one the alias table in umbif.data.sequences recognises.
NAMINGS: dict[str, dict[str, str]] = {
    "brats2023": {
        "folder": "BraTS-GLI-{p:05d}-{t:03d}",
        "t1": "BraTS-GLI-{p:05d}-{t:03d}-t1n",
        "t1c": "BraTS-GLI-{p:05d}-{t:03d}-t1c",
        "t2": "BraTS-GLI-{p:05d}-{t:03d}-t2w",
        "flair": "BraTS-GLI-{p:05d}-{t:03d}-t2f",
        "seg": "BraTS-GLI-{p:05d}-{t:03d}-seg",
    },
    "ucsf": {
        "folder": "UCSF-PDGM-{p:04d}/visit{t}",
        "t1": "UCSF-PDGM-{p:04d}_T1",
        "t1c": "UCSF-PDGM-{p:04d}_T1c",
        "t2": "UCSF-PDGM-{p:04d}_T2",
        "flair": "UCSF-PDGM-{p:04d}_FLAIR",
        "seg": "UCSF-PDGM-{p:04d}_tumor_segmentation",
    },
    "rsna": {
        "folder": "{p:05d}/{t}",
        "t1": "T1w",
        "t1c": "T1wCE",
        "t2": "T2w",
        "flair": "FLAIR",
        "seg": "tumor_seg",
    },
    "upenn": {
        "folder": "UPENN-GBM-{p:05d}/UPENN-GBM-{p:05d}_{t:02d}",
        "t1": "UPENN-GBM-{p:05d}_{t:02d}_T1",
        "t1c": "UPENN-GBM-{p:05d}_{t:02d}_T1GD",
        "t2": "UPENN-GBM-{p:05d}_{t:02d}_T2",
        "flair": "UPENN-GBM-{p:05d}_{t:02d}_FLAIR",
        "seg": "UPENN-GBM-{p:05d}_{t:02d}_segm",
    },
    "hospital": {
        "folder": "pat{p:04d}/exam{t}",
        "t1": "t1_pre",
        "t1c": "ct1",
        "t2": "t2_tse",
        "flair": "t2_flair",
        "seg": "tumour_mask",
    },
    "hospital2": {
        "folder": "case{p:04d}_tp{t}",
        "t1": "T1",
        "t1c": "T1_post",
        "t2": "T2W",
        "flair": "FLAIR",
        "seg": "label",
    },
}

_THICK = Geometry(voxel=(1.0, 1.0, 2.5), orientation="lps")
_THICK_OBLIQUE = Geometry(voxel=(1.0, 1.0, 2.0), orientation="oblique", tilt_deg=12.0)

# Six sites. Values are plausible, not measured: 3T research sites with isotropic 3D imaging and
# preprocessed (BraTS-like) files, 1.5T hospitals with thick 2D T2/FLAIR, DICOM-derived LPS files,
# angled axial stacks, different intensity scales, and routinely missing sequences.
SITES: tuple[Site, ...] = (
    Site("site_a", "brats2023", {s: ISO for s in (*SEQUENCES, "seg")}, 1.0, 0.05, 0.02, 1000, {}, 0.25, True),
    Site(
        "site_b",
        "ucsf",
        {"t1": ISO, "t1c": ISO, "t2": _THICK, "flair": _THICK, "seg": ISO},
        0.95,
        0.15,
        0.03,
        2400,
        {"t1": 0.1},
        0.40,
    ),
    Site(
        "site_c",
        "rsna",
        {s: Geometry(orientation="lps") for s in (*SEQUENCES, "seg")},
        0.85,
        0.2,
        0.04,
        600,
        {"t2": 0.25},
        0.30,
    ),
    Site(
        "site_d",
        "upenn",
        {"t1": _THICK_OBLIQUE, "t1c": ISO, "t2": _THICK_OBLIQUE, "flair": _THICK_OBLIQUE, "seg": ISO},
        0.8,
        0.25,
        0.05,
        3000,
        {"t1": 0.3, "flair": 0.1},
        0.20,
        True,
    ),
    Site(
        "site_e",
        "hospital",
        {
            "t1": Geometry(voxel=(1.5, 1.0, 1.0), orientation="lps", slice_axis=0),  # sagittal slices
            "t1c": ISO,
            "t2": _THICK,
            "flair": _THICK,
            "seg": ISO,
        },
        0.8,
        0.3,
        0.06,
        1500,
        {"t2": 0.3, "t1": 0.15},
        0.35,
    ),
    Site(
        "site_f",
        "hospital2",
        {s: Geometry(voxel=(1.0, 1.0, 1.5), orientation="oblique", tilt_deg=8.0) for s in (*SEQUENCES, "seg")},
        0.9,
        0.1,
        0.035,
        800,
        {"flair": 0.2},
        0.45,
    ),
)


def sites(count: int) -> tuple[Site, ...]:
    """The first ``count`` sites (4 to 6)."""
    if not 1 <= count <= len(SITES):
        raise ValueError(f"--sites must be between 1 and {len(SITES)}, got {count}")
    return SITES[:count]
