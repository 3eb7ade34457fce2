"""The statistical model behind the synthetic glioma cohort: labels, the latent imaging phenotype that
the renderer draws, and the Bayes-optimal "oracle" that reads the labels back from that phenotype.

Generative story per glioma patient (all draws vectorised over patients)::

    site -> labels (IDH, 1p/19q among IDH-mutant, MGMT, outcome) with site-specific prevalence
         -> phenotype features, each Normal or Bernoulli with a mean/logit shifted by the labels
         -> images (``render.py``) ; observed labels = true labels flipped with ``label_noise``

Every shift is one named :data:`ASSOCIATIONS` entry with its literature source; its size is
multiplied by ``SynthConfig.strength[name]`` (default 1). No single feature decides a label, and
because the features are conditionally independent given the labels, the exact posterior of each
label given the features is a sum over the (at most 12) label configurations. The oracle score is
that posterior given what the data carry: every feature the images show, and the site (in the
manifest). Age shifts IDH but is neither drawn into the images nor written to the manifest, so the
oracle leaves it out (:data:`UNSEEN`; conditional independence makes leaving a feature out its exact
marginalisation). Its AUC against the observed labels is the best any model can reach on this cohort.
:func:`oracle_posteriors` computes it; the cohort card stores the AUCs, and those of the posterior that
also knows age (``oracle_auc_with_age``), for reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd
from scipy.special import expit, logsumexp
from scipy.stats import norm

TASKS: tuple[str, ...] = ("idh", "codeletion_1p19q", "mgmt", "outcome")
# indicator of each task's positive class: mutant, codeleted, methylated, progression
INDICATORS: dict[str, str] = {"idh": "idh_mut", "codeletion_1p19q": "codel", "mgmt": "mgmt_meth", "outcome": "prog"}


@dataclass(frozen=True)
class Feature:
    """A latent phenotype feature: ``normal`` (mean, sd) or ``bernoulli`` (base logit)."""

    kind: str
    base: float  # mean (normal) or logit (bernoulli) when every indicator is 0
    sd: float = 0.0  # normal only
    unit: str = ""
    meaning: str = ""


FEATURES: dict[str, Feature] = {
    "age": Feature("normal", 60.0, 12.0, "years", "age at the baseline exam"),
    "frontal": Feature("bernoulli", -0.6, unit="0/1", meaning="tumour centre in the frontal lobe"),
    "cortical": Feature("bernoulli", -0.9, unit="0/1", meaning="tumour reaches the cortex"),
    "log_volume": Feature("normal", np.log(30.0), 0.55, "log ml", "tumour volume (core + oedema excluded)"),
    "enh_logit": Feature("normal", 0.3, 0.9, "logit", "enhancing fraction of the tumour core"),
    "nec_logit": Feature("normal", -0.7, 0.9, "logit", "necrotic fraction of the tumour core"),
    "sharpness": Feature("normal", 0.45, 0.18, "0-1", "margin sharpness (1 = crisp border)"),
    "oedema": Feature("normal", 0.65, 0.25, "x radius", "oedema extent beyond the tumour, in tumour radii"),
    "mismatch": Feature("bernoulli", -3.9, unit="0/1", meaning="T2-FLAIR mismatch (FLAIR-dark core, bright rim)"),
    "calcification": Feature("bernoulli", -3.2, unit="0/1", meaning="calcification-like foci in the tumour"),
    "heterogeneity": Feature("normal", 0.5, 0.2, "0-1", "texture heterogeneity of the tumour core"),
    "growth": Feature("normal", 0.15, 0.25, "log ratio", "log follow-up / baseline lesion volume"),
    "nodularity": Feature("normal", 0.45, 0.2, "0-1", "solid, nodular (1) vs. feathery (0) follow-up enhancement"),
    "new_lesion": Feature("bernoulli", -3.5, unit="0/1", meaning="new distant enhancing focus at follow-up"),
}


@dataclass(frozen=True)
class Association:
    """``feature`` shifts by ``effect`` (mean units or logits) when ``indicator`` is 1."""

    feature: str
    indicator: str  # idh_mut, codel, mgmt_meth, prog, or astro (= IDH-mutant and 1p/19q intact)
    effect: float
    source: str


# Each imaging-genotype association, its default size and where it comes from. Sizes are chosen so
# that the oracle AUCs sit near the published UMBIF figures (0.82-0.93), not at 1.0.
ASSOCIATIONS: dict[str, Association] = {
    "idh_age": Association("age", "idh_mut", -16.0, "IDH-mutant gliomas present ~15-20 years younger (Yan 2009 NEJM)"),
    "idh_frontal": Association(
        "frontal", "idh_mut", 0.9, "IDH-mutant gliomas favour the frontal lobe (Lai 2011 J Clin Oncol)"
    ),
    "idh_enhancement": Association(
        "enh_logit", "idh_mut", -1.1, "less contrast enhancement in IDH-mutant gliomas (Carrillo 2012 AJNR)"
    ),
    "idh_necrosis": Association(
        "nec_logit", "idh_mut", -0.9, "less necrosis in IDH-mutant gliomas (Carrillo 2012 AJNR; Lasocki 2015)"
    ),
    "idh_sharp_margins": Association(
        "sharpness", "idh_mut", 0.15, "sharper, well-defined margins in IDH-mutant gliomas (Lasocki 2017)"
    ),
    "idh_less_oedema": Association(
        "oedema", "idh_mut", -0.2, "less peritumoural oedema in IDH-mutant gliomas (Carrillo 2012 AJNR)"
    ),
    "astro_mismatch": Association(
        "mismatch",
        "astro",
        3.6,
        "T2-FLAIR mismatch sign: specific for IDH-mutant, 1p/19q-intact astrocytoma, seen in a subset "
        "(Patel 2017 Clin Cancer Res; Jain 2020 Neuro-Oncology)",
    ),
    "codel_calcification": Association(
        "calcification", "codel", 2.6, "calcification in 1p/19q-codeleted oligodendroglioma (Saito 2016; Smits 2016)"
    ),
    "codel_cortical": Association(
        "cortical", "codel", 1.4, "cortical involvement of 1p/19q-codeleted tumours (Johnson 2017 AJNR)"
    ),
    "codel_ill_defined": Association(
        "sharpness", "codel", -0.25, "ill-defined margins in 1p/19q-codeleted tumours (Johnson 2017 AJNR)"
    ),
    "codel_heterogeneity": Association(
        "heterogeneity", "codel", 0.15, "heterogeneous signal in oligodendroglioma (Jenkinson 2006; Johnson 2017)"
    ),
    "mgmt_heterogeneity": Association(
        "heterogeneity",
        "mgmt_meth",
        -0.15,
        "weak: more homogeneous texture in MGMT-methylated glioblastoma (Drabycz 2010 NeuroImage)",
    ),
    "mgmt_less_oedema": Association(
        "oedema", "mgmt_meth", -0.15, "weak: less oedema in MGMT-methylated glioblastoma (Carrillo 2012 AJNR)"
    ),
    "mgmt_necrosis": Association(
        "nec_logit", "mgmt_meth", -0.35, "weak: less necrosis in MGMT-methylated tumours (Eoli 2007 Clin Cancer Res)"
    ),
    "mgmt_enhancement": Association(
        "enh_logit", "mgmt_meth", -0.3, "weak, inconsistent in the literature (Drabycz 2010; Han 2018)"
    ),
    "prog_growth": Association(
        "growth", "prog", 0.3, "true progression grows more between exams (RANO: >=25% increase; Wen 2010 JCO)"
    ),
    "prog_nodular": Association(
        "nodularity",
        "prog",
        0.2,
        "solid nodular enhancement in progression vs. 'soap-bubble'/feathery in treatment effect "
        "(Mullins 2005 AJNR; Young 2011 Neurology)",
    ),
    "prog_new_lesion": Association(
        "new_lesion", "prog", 2.2, "a new distant enhancing lesion indicates progression (RANO, Wen 2010 JCO)"
    ),
}

# Label model. Prevalences are per site (SynthConfig.idh_prevalence); the others are fixed here.
P_CODEL_GIVEN_MUT = 0.4  # about 40% of IDH-mutant gliomas are oligodendrogliomas (Louis 2021 WHO CNS5)
P_MGMT_METH = {0: 0.45, 1: 0.85}  # by IDH status (Louis 2021; Mansouri 2019 Neuro-Oncology)
P_PROG = {0: 0.75, 1: 0.55}  # by MGMT status: pseudoprogression is commoner when methylated (Brandes 2008 JCO)


# latent features in ground_truth.csv only: not rendered into any image, not in the manifest
UNSEEN: tuple[str, ...] = ("age",)


def _indicators(labels: pd.DataFrame) -> dict[str, np.ndarray]:
    idh, codel = labels["idh_mut"].to_numpy(), labels["codel"].to_numpy()
    return {
        "idh_mut": idh,
        "codel": codel,
        "astro": idh * (1 - codel),
        "mgmt_meth": labels["mgmt_meth"].to_numpy(),
        "prog": labels["prog"].to_numpy(),
    }


def _location(feature: str, indicators: dict[str, np.ndarray], strength: dict[str, float]) -> np.ndarray:
    """Mean (normal) or logit (bernoulli) of a feature for each patient."""
    n = len(next(iter(indicators.values())))
    loc = np.full(n, FEATURES[feature].base, dtype=np.float64)
    for name, assoc in ASSOCIATIONS.items():
        if assoc.feature == feature:
            loc = loc + strength.get(name, 1.0) * assoc.effect * indicators[assoc.indicator]
    return loc


def sample_labels(sites: np.ndarray, idh_prevalence: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """True labels as 0/1 indicators for patients at ``sites`` (indices into ``idh_prevalence``)."""
    n = len(sites)
    idh = (rng.random(n) < idh_prevalence[sites]).astype(np.int64)
    codel = ((rng.random(n) < P_CODEL_GIVEN_MUT) & (idh == 1)).astype(np.int64)
    meth = (rng.random(n) < np.where(idh == 1, P_MGMT_METH[1], P_MGMT_METH[0])).astype(np.int64)
    prog = (rng.random(n) < np.where(meth == 1, P_PROG[1], P_PROG[0])).astype(np.int64)
    return pd.DataFrame({"site_index": sites, "idh_mut": idh, "codel": codel, "mgmt_meth": meth, "prog": prog})


def sample_phenotype(labels: pd.DataFrame, strength: dict[str, float], rng: np.random.Generator) -> pd.DataFrame:
    """One row of latent features per patient, drawn given the labels."""
    indicators = _indicators(labels)
    out = {}
    for name, feature in FEATURES.items():
        loc = _location(name, indicators, strength)
        if feature.kind == "normal":
            out[name] = loc + feature.sd * rng.standard_normal(len(loc))
        else:
            out[name] = (rng.random(len(loc)) < expit(loc)).astype(np.int64)
    out["age"] = np.clip(out["age"], 18, 90)  # adult cohort; the only clipped feature (~1.5% of IDH-mutant)
    return pd.DataFrame(out)


def observe(labels: pd.DataFrame, noise: float, rng: np.random.Generator) -> pd.DataFrame:
    """Observed labels: each true indicator flipped with probability ``noise``.

    1p/19q is tested only where the recorded IDH status is mutant (WHO CNS5 practice); elsewhere it
    is NaN (not recorded).
    """
    observed = {}
    for task, column in INDICATORS.items():
        flip = rng.random(len(labels)) < noise
        observed[task] = np.where(flip, 1 - labels[column], labels[column]).astype(np.float64)
    observed["codeletion_1p19q"][observed["idh"] == 0] = np.nan
    return pd.DataFrame(observed, index=labels.index)


def _configurations() -> pd.DataFrame:
    """Every label configuration (1p/19q codeleted only when IDH-mutant): 12 rows."""
    rows = [c for c in product((0, 1), repeat=4) if not (c[0] == 0 and c[1] == 1)]
    return pd.DataFrame(rows, columns=["idh_mut", "codel", "mgmt_meth", "prog"])


def _log_prior(config: pd.Series, p_idh: np.ndarray) -> np.ndarray:
    p = np.where(config["idh_mut"], p_idh, 1 - p_idh)
    if config["idh_mut"]:
        p = p * (P_CODEL_GIVEN_MUT if config["codel"] else 1 - P_CODEL_GIVEN_MUT)
    p_meth = P_MGMT_METH[int(config["idh_mut"])]
    p = p * (p_meth if config["mgmt_meth"] else 1 - p_meth)
    p_prog = P_PROG[int(config["mgmt_meth"])]
    return np.log(p * (p_prog if config["prog"] else 1 - p_prog))


def oracle_posteriors(
    phenotype: pd.DataFrame,
    p_idh: np.ndarray,
    strength: dict[str, float],
    codel_given_mutant: bool = True,
    seen: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Exact posterior probability of each task's positive class given the latent features ``seen``.

    Args:
        phenotype: features as drawn by :func:`sample_phenotype` (exact except for age, clipped to
            18-90 years, which moves about 1.5% of IDH-mutant patients).
        p_idh: IDH-mutant prevalence at each patient's site.
        strength: association strength multipliers (as used for sampling).
        codel_given_mutant: score 1p/19q among IDH-mutant tumours (the task's population).
        seen: the features the posterior is given (default: all but :data:`UNSEEN`, what the data carry);
            the others are marginalised out, exactly.

    Returns:
        One column per task with P(positive | features), in [0, 1].
    """
    names = [n for n in FEATURES if n not in UNSEEN] if seen is None else list(seen)
    unknown = sorted(set(names) - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown latent features {unknown}; choose from {list(FEATURES)}")
    configs = _configurations()
    log_joint = np.empty((len(phenotype), len(configs)))
    for j, config in configs.iterrows():
        indicators = {k: np.full(len(phenotype), v) for k, v in _indicators(config.to_frame().T).items()}
        total = _log_prior(config, p_idh)
        for name in names:
            feature, loc = FEATURES[name], _location(name, indicators, strength)
            value = phenotype[name].to_numpy(dtype=np.float64)
            if feature.kind == "normal":
                total = total + norm.logpdf(value, loc, feature.sd)
            else:
                total = total + np.where(value > 0.5, -np.logaddexp(0, -loc), -np.logaddexp(0, loc))
        log_joint[:, j] = total
    out = {}
    for task, column in INDICATORS.items():
        positive = configs[column].to_numpy() == 1
        if task == "codeletion_1p19q" and codel_given_mutant:
            among = configs["idh_mut"].to_numpy() == 1
            num = logsumexp(log_joint[:, positive & among], axis=1)
            den = logsumexp(log_joint[:, among], axis=1)
        else:
            num = logsumexp(log_joint[:, positive], axis=1)
            den = logsumexp(log_joint, axis=1)
        out[task] = np.exp(num - den)
    return pd.DataFrame(out, index=phenotype.index)


def oracle_auc(observed: pd.DataFrame, posteriors: pd.DataFrame) -> dict[str, float]:
    """ROC-AUC of the oracle posterior against the recorded labels, per task (scikit-learn); patients
    without a recorded label (NaN) are left out, as they would be from training and testing."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for task in TASKS:
        keep = observed[task].notna().to_numpy()
        y = observed.loc[keep, task].to_numpy()
        out[task] = float(roc_auc_score(y, posteriors.loc[keep, task])) if 0 < y.sum() < len(y) else float("nan")
    return out


def expected_oracle_auc(
    idh_prevalence: np.ndarray,
    strength: dict[str, float],
    noise: float,
    n: int = 40_000,
    seed: int = 0,
    seen: Iterable[str] | None = None,
) -> dict[str, float]:
    """Population oracle AUC: the same model (given ``seen``, as :func:`oracle_posteriors`) on ``n`` simulated
    patients spread evenly over the sites."""
    rng = np.random.default_rng(seed)
    sites = rng.integers(0, len(idh_prevalence), n)
    labels = sample_labels(sites, idh_prevalence, rng)
    phenotype = sample_phenotype(labels, strength, rng)
    observed = observe(labels, noise, rng)
    return oracle_auc(observed, oracle_posteriors(phenotype, idh_prevalence[sites], strength, seen=seen))
