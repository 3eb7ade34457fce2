"""``lesion-sizes``: the tumour's compartment volumes alone, through the same linear probe as UMBIF.

UMBIF's lesion readout (:mod:`umbif.models.readout`) uses the segmentation to decide *where* to pool
the encoder's tokens. This row shows how much the segmentation says by itself: five numbers per exam,
``log(1 + volume in ml)`` of the enhancing tumour (label 4), the necrotic / non-enhancing core (1),
the oedema (2), the core (1 + 4) and the whole tumour. A foundation model that does not beat this row
has learned nothing a ruler could not tell; radiomics (``radiomics-*``) adds shape and texture to it.

The features are plain numbers of the cache's masks, so they are computed here in a few lines rather
than through pyradiomics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from umbif.adapt.embed import Embeddings
from umbif.data.cache import Cache

SIZE_FEATURES: tuple[str, ...] = ("enhancing", "necrotic_core", "oedema", "core", "whole_tumour")
COMPARTMENT_LABELS: dict[str, tuple[int, ...]] = {  # BraTS labels of each of SIZE_FEATURES
    "enhancing": (4,),
    "necrotic_core": (1,),
    "oedema": (2,),
    "core": (1, 4),
    "whole_tumour": (1, 2, 4),
}


def size_features(cache: Cache, exam_ids: Sequence[str]) -> Embeddings:
    """``[N, 5]`` log compartment volumes (ml) of ``exam_ids``; an exam without a segmentation gets zeros."""
    spacing = cache.preprocess.get("spacing") or (1.0, 1.0, 1.0)
    ml_per_voxel = math.prod(float(s) for s in spacing) / 1000.0
    rows = []
    for exam_id in exam_ids:
        seg = np.asarray(cache.load(exam_id, "masks")[1])
        counts = np.bincount(seg.ravel(), minlength=5)
        voxels = [sum(int(counts[v]) for v in COMPARTMENT_LABELS[n]) for n in SIZE_FEATURES]
        rows.append([math.log1p(ml_per_voxel * v) for v in voxels])
    values = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(SIZE_FEATURES))
    return Embeddings(tuple(exam_ids), values, "lesion-sizes")
