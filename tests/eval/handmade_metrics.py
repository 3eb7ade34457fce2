"""A realistic ``metrics.json`` built by hand per the shared schema (no evaluation code involved):
4 methods (the headline ``umbif-probe``, two baselines, its untrained control) x 4 tasks x k-fold
and leave-one-site-out, per-site rows, DeLong comparisons against ``umbif-probe``, and the nulls
real runs produce (AUC and sensitivity undefined at a site without positives, a method without a
recorded wall time)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score, roc_curve

# class separation of each method's scores
METHODS = {"umbif-probe": 1.6, "radiomics-lr": 1.0, "cnn-resnet18": 0.6, "umbif-random-probe": 0.3}
TASK_SIZES = {"outcome": 48, "idh": 64, "mgmt": 56, "codeletion_1p19q": 30}
SITES = ("site-A", "site-B", "site-C", "site-D")


def _ci(value: float | None, n: int) -> dict[str, float | None]:
    """A Wald-style interval, enough to look like a bootstrap one."""
    if value is None:
        return {"value": None, "low": None, "high": None}
    half = 1.96 * np.sqrt(max(value * (1 - value), 0.01) / n)
    return {"value": value, "low": max(0.0, value - half), "high": min(1.0, value + half)}


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def _point_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    decision = score >= 0.5
    return {
        "accuracy": float(accuracy_score(y, decision)),
        "sensitivity": _rate(decision[y == 1]),
        "specificity": _rate(~decision[y == 0]),
        "auc": float(roc_auc_score(y, score)) if len(set(y)) == 2 else None,
    }


def _result(method: str, task: str, scheme: str, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n = TASK_SIZES[task]
    y = (np.arange(n) % 3 == 0).astype(int)  # a third positive
    site = np.array([SITES[i % len(SITES)] for i in range(n)])
    if task == "codeletion_1p19q":
        y[site == "site-D"] = 0  # no codeleted tumour at site D: AUC and sensitivity undefined there
    score = 1 / (1 + np.exp(-(METHODS[method] * (2 * y - 1) + rng.normal(0, 1.2, n))))
    point = _point_metrics(y, score)
    decision = score >= 0.5
    ppv, npv = _rate(y[decision] == 1), _rate(y[~decision] == 0)
    metrics = {name: _ci(value, n) for name, value in point.items()}
    metrics["balanced_accuracy"] = _ci((point["sensitivity"] + point["specificity"]) / 2, n)
    metrics["ppv"], metrics["npv"] = _ci(ppv, n), _ci(npv, n)
    metrics["brier"] = _ci(float(brier_score_loss(y, score)), n)
    fpr, tpr, _ = roc_curve(y, score)
    bins = np.minimum((score * 5).astype(int), 4)
    used = [b for b in range(5) if (bins == b).any()]
    per_site = []
    for name in SITES:
        here = site == name
        counts = {"n": int(here.sum()), "n_positive": int(y[here].sum())}
        per_site.append({"site": name, **counts, **_point_metrics(y[here], score[here])})
    return {
        "method": method,
        "task": task,
        "scheme": scheme,
        "n_samples": n,
        "n_patients": n,
        "n_positive": int(y.sum()),
        "repeats": 5 if scheme == "kfold" else 1,
        "folds": 5 if scheme == "kfold" else len(SITES),
        "metrics": metrics,
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        "reliability": {
            "mean_score": [float(score[bins == b].mean()) for b in used],
            "fraction_positive": [float(y[bins == b].mean()) for b in used],
            "count": [int((bins == b).sum()) for b in used],
        },
        "per_site": per_site,
        "comparison": None,
    }


def _compare(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    auc, auc_against = result["metrics"]["auc"]["value"], reference["metrics"]["auc"]["value"]
    z = (auc - auc_against) / 0.05
    return {
        "against": reference["method"],
        "n": result["n_samples"],
        "auc": auc,
        "auc_against": auc_against,
        "difference": auc - auc_against,
        "p_value": float(2 * norm.sf(abs(z))),
    }


def handmade_metrics() -> dict[str, Any]:
    """The whole document, deterministic."""
    results = []
    for seed, (scheme, task, method) in enumerate(
        (s, t, m) for s in ("kfold", "loso") for t in TASK_SIZES for m in METHODS
    ):
        results.append(_result(method, task, scheme, seed))
    by_key = {(r["method"], r["task"], r["scheme"]): r for r in results}
    for result in results:
        if result["method"] != "umbif-probe":
            result["comparison"] = _compare(result, by_key[("umbif-probe", result["task"], result["scheme"])])
    return {
        "format": "umbif-metrics",
        "version": 1,
        "provenance": {
            "created": "2025-03-01T10:00:00+00:00",
            "versions": {"python": "3.11.2", "umbif": "0.1.0", "torch": "2.13.0", "scikit-learn": "1.5.0"},
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "machine": {"platform": "Linux", "processor": "x86_64", "cpus": 2},
            "seed": 0,
            "config": {"folds": 5, "repeats": 5, "bootstrap": 1000, "methods": list(METHODS)},
        },
        "cohort": {"manifest": "manifest.csv", "n_exams": 240, "sites": list(SITES)},
        "bootstrap": {"n": 1000, "level": 0.95, "unit": "patient", "seed": 0},
        "reference": {
            "outcome": {"accuracy": 0.899, "auc": 0.815},
            "codeletion_1p19q": {"accuracy": 0.898, "auc": 0.916},
            "idh": {"accuracy": 0.829, "auc": 0.896},
            "mgmt": {"accuracy": 0.905, "auc": 0.859},
        },
        "oracle_auc": {"outcome": 0.93, "idh": 0.97, "mgmt": 0.88, "codeletion_1p19q": 0.95},
        "methods": {
            "umbif-probe": {"description": "UMBIF encoder, frozen, linear probe", "wall_time_s": 12.5},
            "radiomics-lr": {"description": "radiomics features + logistic regression", "wall_time_s": 3.25},
            "cnn-resnet18": {"description": "3D ResNet-18 from scratch", "wall_time_s": None},
            "umbif-random-probe": {"description": "UMBIF architecture, untrained, linear probe", "wall_time_s": 9.0},
        },
        "reference_method": "umbif-probe",
        "results": results,
    }
