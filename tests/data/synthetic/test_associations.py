"""Each documented imaging-genotype association (``cohort.ASSOCIATIONS``) is present in what the renderer
draws, not only in the latent table: patients come from ``plan_cohort``, their gliomas are drawn with
``draw_glioma`` on the 2 mm MNI template, and every quantity is measured from the partial-volume maps, the
BraTS segmentation or the noise-free rendered signal, never read from the latent features. Groups are
split by the TRUE labels; each test is a one-sided Mann-Whitney U or Fisher exact test at p < 0.01, with
the group means (rates) in the documented direction. Run with ``-s`` to see the numbers.

To keep this fast the cohort is planned large (enough IDH-mutant and 1p/19q-codeleted patients) but only a
label-stratified subset is drawn: every IDH-mutant patient and the first wildtype ones at baseline, and the
first progressions and non-progressions among those at follow-up. Choosing patients by their label does
not bias a comparison between label groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.stats import fisher_exact, mannwhitneyu

from umbif.config import SynthConfig
from umbif.data.synthetic import anatomy, lesions, render
from umbif.data.synthetic.generate import plan_cohort

SEED = 13  # every tested p < 2e-4 at this seed (run with -s to see them)
PATIENTS = 700  # planned (glioma cohort only); ~210 IDH-mutant, ~85 codeleted
WILDTYPE_DRAWN = 160  # IDH-wildtype patients drawn at baseline (every IDH-mutant one is)
FOLLOW_UP_DRAWN = 150  # patients drawn at follow-up, per outcome group
ALPHA = 0.01
CORE = ("necrosis", "enhancing", "nonenhancing")
GLIOMA_MAPS = (*CORE, "oedema", "calcification", "cavity", "texture", "mismatch")
# the frontal and non-frontal boxes of lesions.py end at y = 8 and y = 5 mm (MNI): split halfway
FRONTAL_Y_MM = 6.5
CORTEX_DEPTH_MM = 8.0  # grey matter this close to the brain surface is cortex (as in anatomy.tissue_maps)
NEW_LESION_MIN_VOXELS = 12  # ~0.1 ml at 2 mm: a distinct enhancing lesion, not a partial-volume crumb
FLAIR_DARK = 0.7  # FLAIR below 0.7 x T2: fluid-like suppression (non-enhancing tumour alone gives ~1.05)


def _crop(maps: dict[str, np.ndarray]) -> tuple[slice, ...]:
    """Bounding box of everything the glioma(s) drew (all glioma maps lie inside core + oedema)."""
    drawn = (maps["oedema"] + maps["necrosis"] + maps["enhancing"] + maps["nonenhancing"] + maps["cavity"]) > 0
    box = []
    for axis in range(3):
        hit = np.flatnonzero(drawn.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _draw(
    template: anatomy.Template, maps: dict[str, np.ndarray], gliomas, rng: np.random.Generator
) -> tuple[tuple[slice, ...], dict[str, np.ndarray]]:
    """Draw one exam's gliomas on ``maps`` (empty, from ``lesions.empty_maps``); return the box around
    them and copies of the glioma maps inside it. ``maps`` is emptied again, so one set serves every exam."""
    for glioma in gliomas:
        lesions.draw_glioma(template, maps, glioma, rng)
    box = _crop(maps)
    cropped = {name: maps[name][box].copy() for name in GLIOMA_MAPS if name in maps}
    for name in GLIOMA_MAPS:
        if name in maps:
            maps[name][box] = 0.0
    return box, cropped


def _baseline(template: anatomy.Template, tissues: dict[str, np.ndarray], box: tuple, maps: dict) -> dict[str, float]:
    """What a reader would measure on the baseline exam."""
    core = sum(maps[n] for n in CORE)
    volume = float(core.sum())
    solid = core >= 0.5
    seg = lesions.segmentation(maps)
    mm = (np.argwhere(solid) + [s.start for s in box]) @ template.affine[:3, :3].T + template.affine[:3, 3]
    depth = template.depth[box]
    cortex = template.gm[box] * (depth < CORTEX_DEPTH_MM)
    # T2-FLAIR mismatch: FLAIR / T2 of the rendered signal in the non-enhancing core, leaving out voxels
    # that share their volume with CSF (fluid is dark on FLAIR and bright on T2 whatever the tumour)
    tissues = {name: layer[box] for name, layer in tissues.items()}
    flair = render.render(tissues, maps, "flair", None)
    t2 = render.render(tissues, maps, "t2", None)
    fluid = tissues["csf"] * (1 - np.clip(core + maps["oedema"], 0, 1))
    nonenhancing = (maps["nonenhancing"] >= 0.5) & (fluid < 0.05)
    return {
        "core_ml": volume * template.spacing**3 / 1000,
        "enhancing_of_core": float(maps["enhancing"].sum()) / volume,  # partial volumes
        "et_of_tc": float((seg == 4).sum()) / max(1, int(np.isin(seg, (1, 4)).sum())),  # BraTS ET / TC
        "necrosis_of_core": float(maps["necrosis"].sum()) / volume,
        "oedema_per_core": float(maps["oedema"].sum()) / volume,
        "centre_y_mm": float(mm[:, 1].mean()),
        "min_depth_mm": float(depth[solid].min()),
        "cortex_of_core": float((core * cortex).sum()) / volume,
        "calcified_voxels": int((maps["calcification"] >= 0.5).sum()),
        "flair_t2": float(flair[nonenhancing].mean() / t2[nonenhancing].mean()) if nonenhancing.any() else np.nan,
        "flair_dark_ml": float((flair < FLAIR_DARK * t2)[nonenhancing].sum()) * template.spacing**3 / 1000,
    }


def _follow_up(maps: dict, baseline_ml: float, spacing: float) -> dict[str, float]:
    """Growth of the tumour bed and the number of separate enhancing lesions at follow-up."""
    bed = sum(maps[n] for n in CORE) + maps["cavity"]  # the tumour core plus the resection cavity
    components, _ = ndimage.label(bed >= 0.5)
    sizes = np.bincount(components.ravel())
    enhancing = np.unique(components[maps["enhancing"] >= 0.5])  # components holding an enhancing voxel
    enhancing = enhancing[enhancing > 0]
    return {
        "growth": float(np.log(bed.sum() * spacing**3 / 1000 / baseline_ml)),
        "enhancing_lesions": int((sizes[enhancing] >= NEW_LESION_MIN_VOXELS).sum()),
    }


def measure_cohort(seed: int = SEED) -> dict[str, pd.DataFrame]:
    """Measurements of the drawn maps, one row per patient, with the true labels: ``baseline`` (every
    IDH-mutant patient and the first wildtype ones) and ``follow_up`` (the first progressions and
    non-progressions; growth where the baseline exam was drawn too, NaN elsewhere)."""
    template = anatomy.load_template(2)
    plans, truth = plan_cohort(SynthConfig(exams=2 * PATIENTS, seed=seed, glioma_fraction=1.0))
    tissues = anatomy.tissue_maps(template, anatomy.sample_subject(60.0, np.random.default_rng(seed)))
    truth = truth.set_index("exam_id")
    first = [p for p in plans if p.cohort == "glioma" and p.timepoint == 0]
    second = {p.patient_id: p for p in plans if p.cohort == "glioma" and p.timepoint == 1}
    labels = truth.loc[[p.exam_id for p in first], ["true_idh_mut", "true_codel", "true_prog"]].to_numpy()
    mutant, prog = labels[:, 0] == 1, labels[:, 2] == 1
    at_baseline = mutant | (np.cumsum(~mutant) <= WILDTYPE_DRAWN)
    at_follow_up = np.where(prog, np.cumsum(prog), np.cumsum(~prog)) <= FOLLOW_UP_DRAWN
    maps = lesions.empty_maps(template.brain.shape)
    baseline, follow_up = [], []
    for k in np.flatnonzero(at_baseline | at_follow_up):
        plan = first[k]
        row = {"idh_mut": labels[k, 0], "codel": labels[k, 1], "prog": labels[k, 2]}
        if at_baseline[k]:
            rng = np.random.default_rng([seed, plan.patient, 0])
            baseline.append({**row, **_baseline(template, tissues, *_draw(template, maps, plan.gliomas, rng))})
        if at_follow_up[k]:
            rng = np.random.default_rng([seed, plan.patient, 1])
            _, later = _draw(template, maps, second[plan.patient_id].gliomas, rng)
            before = baseline[-1]["core_ml"] if at_baseline[k] else np.nan
            follow_up.append({**row, **_follow_up(later, before, template.spacing)})
    return {"baseline": pd.DataFrame(baseline), "follow_up": pd.DataFrame(follow_up)}


@pytest.fixture(scope="module")
def measured() -> dict[str, pd.DataFrame]:
    return measure_cohort()


@pytest.fixture(scope="module")
def drawn(measured: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The baseline measurements."""
    return measured["baseline"]


@pytest.fixture(scope="module")
def followed(measured: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The follow-up measurements."""
    return measured["follow_up"]


def _mann_whitney(values: pd.Series, lower: pd.Series, higher: pd.Series) -> float:
    """One-sided Mann-Whitney p-value that ``values`` are larger in the ``higher`` group; asserts that
    the means are in that order too."""
    a, b = values[lower].dropna(), values[higher].dropna()
    p = mannwhitneyu(b, a, alternative="greater").pvalue
    print(f"{values.name}: mean {a.mean():.4g} (n={len(a)}) < {b.mean():.4g} (n={len(b)}), Mann-Whitney p={p:.2g}")
    assert b.mean() > a.mean(), (values.name, a.mean(), b.mean())
    return p


def _fisher(present: pd.Series, lower: pd.Series, higher: pd.Series) -> float:
    """One-sided Fisher exact p-value that ``present`` is commoner in the ``higher`` group; asserts that
    the rates are in that order too."""
    table = [[int(present[higher].sum()), int((~present[higher]).sum())]]
    table.append([int(present[lower].sum()), int((~present[lower]).sum())])
    p = fisher_exact(table, alternative="greater").pvalue
    print(f"{present.name}: rate {present[lower].mean():.3f} < {present[higher].mean():.3f}, Fisher p={p:.2g}")
    assert present[higher].mean() > present[lower].mean(), (present.name, present[lower].mean())
    return p


def test_the_drawn_cohort_has_every_group(drawn: pd.DataFrame, followed: pd.DataFrame) -> None:
    mutant, codeleted = drawn["idh_mut"] == 1, drawn["codel"] == 1
    counts = {
        "idh_mutant": int(mutant.sum()),
        "wildtype": int((~mutant).sum()),
        "codeleted": int(codeleted.sum()),
        "astrocytoma": int((mutant & ~codeleted).sum()),
        "progression": int((followed["prog"] == 1).sum()),
        "no_progression": int((followed["prog"] == 0).sum()),
        "growth_measured": int(followed["growth"].notna().sum()),
    }
    print(counts)
    assert counts["wildtype"] == WILDTYPE_DRAWN
    assert counts["progression"] == counts["no_progression"] == FOLLOW_UP_DRAWN
    assert min(counts.values()) >= 70
    assert drawn["flair_t2"].isna().mean() < 0.05  # nearly every tumour has a non-enhancing core
    assert not drawn.isna().drop(columns="flair_t2").any().any()


def test_idh_mutant_enhance_less(drawn: pd.DataFrame) -> None:
    """Carrillo 2012: less enhancement in IDH-mutant gliomas. Enhancing tumour / tumour core on the
    BraTS segmentation, and the enhancing partial volume over the core's."""
    mutant = drawn["idh_mut"] == 1
    assert _mann_whitney(drawn["et_of_tc"], mutant, ~mutant) < ALPHA
    assert _mann_whitney(drawn["enhancing_of_core"], mutant, ~mutant) < ALPHA


def test_idh_mutant_have_less_necrosis(drawn: pd.DataFrame) -> None:
    mutant = drawn["idh_mut"] == 1
    assert _mann_whitney(drawn["necrosis_of_core"], mutant, ~mutant) < ALPHA


def test_idh_mutant_have_less_oedema(drawn: pd.DataFrame) -> None:
    """Oedema volume relative to the core volume."""
    mutant = drawn["idh_mut"] == 1
    assert _mann_whitney(drawn["oedema_per_core"], mutant, ~mutant) < ALPHA


def test_idh_mutant_are_more_often_frontal(drawn: pd.DataFrame) -> None:
    """Centre of the solid core (MNI y) in front of the frontal boundary."""
    mutant = drawn["idh_mut"] == 1
    frontal = (drawn["centre_y_mm"] > FRONTAL_Y_MM).rename("frontal")
    assert _fisher(frontal, ~mutant, mutant) < ALPHA


def test_codeleted_tumours_calcify(drawn: pd.DataFrame) -> None:
    codeleted = drawn["codel"] == 1
    calcified = (drawn["calcified_voxels"] > 0).rename("calcified")
    assert _fisher(calcified, ~codeleted, codeleted) < ALPHA


def test_codeleted_tumours_involve_the_cortex(drawn: pd.DataFrame) -> None:
    """Johnson 2017: cortical involvement. The share of the core lying in cortical grey matter is
    larger in codeleted tumours, and their solid core reaches the outermost voxel layer of the brain
    (template depth <= 2 mm) more often."""
    codeleted = drawn["codel"] == 1
    assert _mann_whitney(drawn["cortex_of_core"], ~codeleted, codeleted) < ALPHA
    assert _fisher((drawn["min_depth_mm"] <= 2.0).rename("reaches_surface"), ~codeleted, codeleted) < ALPHA


def test_t2_flair_mismatch_in_idh_mutant_1p19q_intact(drawn: pd.DataFrame) -> None:
    """Patel 2017: the non-enhancing core of IDH-mutant, 1p/19q-intact tumours is often dark on FLAIR
    relative to T2. FLAIR / T2 of the noise-free rendered signal over the non-enhancing core is lower, and
    a FLAIR-dark region (FLAIR < 0.7 T2) is present far more often."""
    astrocytoma = (drawn["idh_mut"] == 1) & (drawn["codel"] == 0)
    assert _mann_whitney(drawn["flair_t2"], astrocytoma, ~astrocytoma) < ALPHA
    assert _fisher((drawn["flair_dark_ml"] > 0).rename("flair_dark"), ~astrocytoma, astrocytoma) < ALPHA


def test_progression_grows_more(followed: pd.DataFrame) -> None:
    """log(follow-up tumour bed / baseline core volume), RANO; where both exams were drawn."""
    progression = followed["prog"] == 1
    assert _mann_whitney(followed["growth"], ~progression, progression) < ALPHA


def test_progression_brings_new_enhancing_lesions(followed: pd.DataFrame) -> None:
    """Separate enhancing lesions at follow-up (connected components of the tumour bed with enhancement)."""
    progression = followed["prog"] == 1
    several = (followed["enhancing_lesions"] >= 2).rename("new_lesion")
    assert _fisher(several, ~progression, progression) < ALPHA
    assert _mann_whitney(followed["enhancing_lesions"], ~progression, progression) < ALPHA
