"""Are the synthetic contrasts realistic? Per sequence, the order of the CSF, grey matter, white matter,
oedema and enhancing-tumour intensities of a synthetic glioblastoma exam must match the real UPENN-GBM
exam (../shared/data/upenn-gbm-sample).

The real exam has no segmentation, so neither side uses one: the same image-based procedure
(:func:`class_masks`) finds the classes in the real exam and in a synthetic exam written by
``render_exam``, and the per-class medians (relative to the white-matter median of the same sequence,
since the scales differ) are compared:

1. tumour: abnormal FLAIR hyperintensity (above 1.5x the brain median), its largest connected component
   with holes filled (the necrotic core); "enhancing" = voxels of it brighter on T1c than 1.3x normal
   white matter, "oedema" = the rest of the FLAIR-bright component (oedema and non-enhancing tumour);
2. normal brain: the brain (nonzero in every sequence) eroded by 2 voxels, minus the tumour dilated by
   3 voxels; a 3-class Gaussian mixture on log T1 (after N4 bias correction, which the real exam needs:
   without it the mixture splits the brain by the bias field, not by tissue) gives CSF < GM < WM.

The tissue classes are defined on T1, so their T1 order holds by construction and is not compared;
their order is tested on T1c, T2 and FLAIR, and the tumour classes against every class on all four.
The real exam is 1 mm; it is block-averaged to 2 mm, the grid the synthetic exam is rendered on.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from sklearn.mixture import GaussianMixture

from umbif import SEQUENCES
from umbif.config import SynthConfig
from umbif.data.synthetic.generate import ExamPlan, render_exam
from umbif.data.synthetic.lesions import Glioma
from umbif.data.synthetic.sites import sites

REAL_FILES = {"t1": "00001_t1n", "t1c": "00001_t1c", "t2": "00001_t2w", "flair": "00001_t2f"}
CLASSES = ("csf", "gm", "wm", "oedema", "enhancing")
TISSUES = ("csf", "gm", "wm")
FLAIR_BRIGHT = 1.5  # abnormal FLAIR: above this multiple of the brain's median FLAIR
ENHANCING = 1.3  # enhancing: T1c above this multiple of the normal white-matter median T1c
# Real medians closer than this (fraction of the WM median) are no reliable order: they move by up to
# ~0.07 when the thresholds above or the mixture's confidence change, and this is a single exam.
MARGIN = 0.10
# a glioblastoma like the real one: a necrotic core, an enhancing rim, wide oedema (right frontal WM)
GLIOBLASTOMA = Glioma(
    centre_mm=(30.0, 14.0, 18.0),
    volume_ml=30.0,
    enhancing=0.6,
    necrosis=0.3,
    sharpness=0.5,
    oedema=1.0,
    heterogeneity=0.5,
    mismatch=False,
    calcification=False,
)


def block_mean(volume: np.ndarray, factor: int = 2) -> np.ndarray:
    """Average ``factor``^3 blocks (the trailing remainder of each axis is dropped)."""
    shape = [n // factor for n in volume.shape]
    cropped = volume[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return cropped.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean((1, 3, 5))


def n4_corrected(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``volume`` divided by the N4 bias field estimated inside ``mask`` (fitted at half resolution)."""
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    shrunk = sitk.Shrink(image, [2] * 3), sitk.Shrink(sitk.GetImageFromArray(mask.astype(np.uint8)), [2] * 3)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([20, 20, 20])
    n4.Execute(*shrunk)
    return volume / np.exp(sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(image)))


def class_masks(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CSF, GM, WM, oedema and enhancing tumour of one exam, found in its images alone."""
    brain = np.all([images[s] > 0 for s in SEQUENCES], axis=0)
    flair = images["flair"] / np.median(images["flair"][brain])
    bright = ndimage.binary_opening(brain & (flair > FLAIR_BRIGHT))
    labels, _ = ndimage.label(bright)
    lesion = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    tumour = ndimage.binary_fill_holes(lesion)
    normal = ndimage.binary_erosion(brain, iterations=2) & ~ndimage.binary_dilation(tumour, iterations=3)

    t1 = np.log(np.maximum(n4_corrected(images["t1"], normal)[normal], 1e-3))
    mixture = GaussianMixture(3, random_state=0).fit(t1[::4, None])
    tissue = np.argsort(np.argsort(mixture.means_.ravel()))[mixture.predict(t1[:, None])]  # 0 CSF, 1 GM, 2 WM
    masks = {}
    for k, name in enumerate(TISSUES):
        masks[name] = np.zeros_like(normal)
        masks[name][normal] = tissue == k
    t1c = images["t1c"] / np.median(images["t1c"][masks["wm"]])
    masks["enhancing"] = tumour & (t1c > ENHANCING)
    masks["oedema"] = lesion & ~masks["enhancing"]
    return masks


def class_medians(images: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Median of each class per sequence, relative to the sequence's white-matter median."""
    table = {}
    for sequence in SEQUENCES:
        wm = np.median(images[sequence][masks["wm"]])
        table[sequence] = {name: float(np.median(images[sequence][masks[name]]) / wm) for name in CLASSES}
    return table


def format_table(title: str, table: dict[str, dict[str, float]]) -> str:
    lines = [f"{title} (class median / WM median)", "        " + "".join(f"{c:>10}" for c in CLASSES)]
    for sequence, row in table.items():
        lines.append(f"{sequence:8}" + "".join(f"{row[c]:10.2f}" for c in CLASSES))
    return "\n".join(lines)


def load(folder: Path, names: dict[str, str]) -> dict[str, np.ndarray]:
    return {s: np.asarray(nib.load(folder / f"{names[s]}.nii.gz").dataobj, dtype=np.float32) for s in SEQUENCES}


@pytest.fixture(scope="module")
def real(upenn_sample: Path) -> dict:
    images = {s: block_mean(v) for s, v in load(upenn_sample, REAL_FILES).items()}
    masks = class_masks(images)
    return {"masks": masks, "medians": class_medians(images, masks)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    config = SynthConfig(exams=4, seed=0, sites=1, spacing=2.0)
    assert sites(config.sites)[0].skull_stripped  # site_a: BraTS-like, brain-extracted like the real exam
    plan = ExamPlan("site_a-0001-0", "site_a-0001", 0, 0, 1, 0, "glioma", "glioma", 55.0, (GLIOBLASTOMA,))
    out = tmp_path_factory.mktemp("synthetic")
    record = render_exam(plan, out, config)
    images = {s: np.asarray(nib.load(out / record["files"][s]).dataobj, dtype=np.float32) for s in SEQUENCES}
    seg = np.asarray(nib.load(out / record["files"]["seg"]).dataobj)
    masks = class_masks(images)
    return {"masks": masks, "medians": class_medians(images, masks), "seg": seg}


def test_classes_are_found_in_both_exams(real: dict, synthetic: dict) -> None:
    for exam in (real, synthetic):
        counts = {name: int(mask.sum()) for name, mask in exam["masks"].items()}
        assert min(counts.values()) >= 50, counts  # 50 voxels of 2 mm: 0.4 ml
        t1 = exam["medians"]["t1"]
        assert t1["csf"] < t1["gm"] < t1["wm"]  # by construction (the mixture is fitted on T1)


def test_procedure_finds_the_synthetic_tumour(synthetic: dict) -> None:
    """Checked against the synthetic exam's own segmentation (BraTS labels 1, 2, 4), which the
    procedure does not see: the classes it finds are the tumour compartments."""
    seg, masks = synthetic["seg"], synthetic["masks"]
    assert (seg[masks["enhancing"]] == 4).mean() > 0.9
    assert (seg[masks["oedema"]] > 0).mean() > 0.8  # the rest: partial volume at its edge
    # normal tissue is almost never tumour: the infiltrative margin beyond the FLAIR-bright region
    # (a soft edge the segmentation counts from 50% tumour on) is all that leaks in
    assert (seg[masks["wm"] | masks["gm"] | masks["csf"]] > 0).mean() < 0.02


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_class_order_matches_the_real_exam(sequence: str, real: dict, synthetic: dict) -> None:
    print("\n" + format_table("real UPENN-GBM 00001", real["medians"]))
    print(format_table("synthetic site_a glioblastoma", synthetic["medians"]))
    ours, theirs = synthetic["medians"][sequence], real["medians"][sequence]
    compared, wrong = [], []
    for i, a in enumerate(CLASSES):
        for b in CLASSES[i + 1 :]:
            if sequence == "t1" and a in TISSUES and b in TISSUES:
                continue  # defined on T1
            if abs(theirs[a] - theirs[b]) < MARGIN:
                continue  # too close in the real exam to be a reliable order
            low, high = (a, b) if theirs[a] < theirs[b] else (b, a)
            compared.append(f"{low} < {high}")
            if not ours[low] < ours[high]:
                wrong.append(
                    f"{low} < {high} in the real exam ({theirs[low]:.2f} < {theirs[high]:.2f} x WM), "
                    f"synthetic {ours[low]:.2f} vs {ours[high]:.2f}"
                )
    print(f"{sequence}: compared {', '.join(compared)}")
    assert compared
    assert not wrong, f"{sequence}: " + "; ".join(wrong)
