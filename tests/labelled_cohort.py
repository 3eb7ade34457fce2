"""A tiny labelled multi-site cohort, cached, and a random tiny encoder: the end-to-end test fixture of
evaluation, probing and embedding. Labels are planted as image signal so a probe can learn them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from umbif import SEQUENCES
from umbif.config import PreprocessConfig
from umbif.data.cache import run_preprocess
from umbif.data.manifest import LABELS, Manifest
from umbif.models.io import save_encoder
from umbif.models.umbif import ModelConfig, UMBIFEncoder

SHAPE = (32, 32, 32)
TINY = ModelConfig(image_size=SHAPE, patch_size=8, dim=48, depth=2, heads=3, decoder_dim=24, decoder_heads=2)


@dataclass
class TinyCohort:
    manifest_path: Path
    manifest: Manifest
    cache: Path
    encoder: Path
    truth: pd.DataFrame  # one row per patient: patient_id, site, idh, mgmt, codel, progression (0/1)


def _phantom(rng: np.random.Generator) -> np.ndarray:
    """An ellipsoid head of two tissues with mild noise, zero outside (float32), size varying per patient."""
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij"))
    axes = np.array([0.7, 0.8, 0.6]) * rng.uniform(0.92, 1.05)
    radius = np.sqrt(((grid / axes[:, None, None, None]) ** 2).sum(0))
    image = np.where(radius < 1.0, 300.0, 0.0) + np.where(radius < 0.5, 200.0, 0.0)
    return (image + (radius < 1.0) * rng.normal(0, 10, SHAPE)).astype(np.float32)


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _lesion(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"))
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) < radius**2


def build(root: Path, patients: int = 36, sites: int = 3, seed: int = 0, seg: bool = False) -> TinyCohort:
    """``patients`` glioma patients over ``sites`` sites, each with a baseline and a follow-up exam.

    IDH-mutant tumours are bright on T2 (blob in the left hemisphere), MGMT methylation adds a
    FLAIR rim, progression grows the follow-up lesion. The 4th patient of each site lacks T1.
    ``seg=True`` also writes the lesion as a tumour segmentation (manifest column ``seg``, label 1).
    """
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for k in range(patients):
        site = f"site{k % sites}"
        pid = f"P{k:03d}"
        idh, mgmt, prog = (int(v) for v in rng.integers(0, 2, 3))
        codel = int(rng.integers(0, 2)) if idh else 0
        truth.append({"patient_id": pid, "site": site, "idh": idh, "mgmt": mgmt, "codel": codel, "prog": prog})
        base = _phantom(rng)
        for t in (0, 1):
            radius = 4.0 + (3.0 if (t == 1 and prog) else 0.0) + rng.normal(0, 0.3)
            lesion = _lesion(SHAPE, (12, 16, 16), radius)
            rim = _lesion(SHAPE, (12, 16, 16), radius + 2) & ~lesion
            exam = f"{pid}-{t}"
            row = {"exam_id": exam, "patient_id": pid, "site": site, "timepoint": str(t)}
            if seg:
                row["seg"] = f"data/{exam}/seg.nii.gz"
                _save(root / row["seg"], lesion.astype(np.uint8))
            for s, sequence in enumerate(SEQUENCES):
                if sequence == "t1" and k % sites == 0 and k // sites == 3:
                    continue
                image = base * (s + 1) + rng.normal(0, 5, SHAPE).astype(np.float32) * (base > 0)
                if sequence == "t2":
                    image[lesion] += 600.0 if idh else 150.0
                if sequence == "flair" and mgmt:
                    image[rim] += 500.0
                if sequence == "t1c":
                    image[lesion] += 300.0 * (1 + codel)
                row[sequence] = f"data/{exam}/{sequence}.nii.gz"
                _save(root / row[sequence], image)
            labels = {"idh": idh, "mgmt": mgmt}
            if idh:
                labels["codeletion_1p19q"] = codel
            if t == 1:
                labels["outcome"] = prog
            for task, value in labels.items():
                row[task] = LABELS[task][0] if value else LABELS[task][1]
            rows.append(row)
    manifest = Manifest(pd.DataFrame(rows), root)
    manifest_path = root / "manifest.csv"
    manifest.write(manifest_path)
    cache = root / "cache"
    report = run_preprocess(manifest, cache, PreprocessConfig(shape=SHAPE))
    assert report.ok, report.failures
    torch.manual_seed(seed)
    encoder = save_encoder(UMBIFEncoder(TINY), TINY, root / "encoder")
    return TinyCohort(manifest_path, manifest, cache, encoder, pd.DataFrame(truth))
