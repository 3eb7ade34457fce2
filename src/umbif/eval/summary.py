"""From a predictions table to ``metrics.json``: metrics with patient-bootstrap CIs, ROC, calibration, per site, DeLong.

The input is the table every method writes (columns :data:`PREDICTION_COLUMNS`,
one row per method, task, scheme, repeat and sample); everything here is computed from it alone, so
methods are compared on identical samples and folds.

- Point value of a metric: the mean over repeats of the metric on that repeat's pooled
  out-of-fold predictions (each sample judged with its own fold's threshold).
- Interval: patient-level bootstrap percentile interval of that same repeat-averaged statistic.
  A replicate resamples patients with replacement; every prediction of a drawn patient (in every
  repeat) enters with the patient's draw count as its weight, so a replicate is one weight matrix
  and all replicates are scored at once (:func:`umbif.metrics.binary_metrics`).
- ROC points, reliability curve and per-site metrics: repeat 0.
- Comparison: DeLong's test against ``reference_method`` on the samples both methods scored, each
  sample's score averaged over the repeats both methods have (a method may run fewer k-fold repeats:
  ``MethodSpec.max_repeats``); ``repeats`` in the comparison says how many.
- Label-permutation p-value (k-fold rows): the pooled out-of-fold AUC of repeat 0 judged against the
  null AUCs of the method's permutation test (:mod:`umbif.eval.permutation`); null where the method
  has no test (its ``notes`` say why) and for leave-one-site-out.

Example::

    document = metrics_document(predictions, methods={"umbif-probe": {"description": "...", "wall_time_s": 12.0}},
                                provenance=provenance(config, seed), reference_method="umbif-probe")
    write_metrics(document, "runs/eval/metrics.json")
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from umbif.data.samples import TASKS
from umbif.eval.permutation import REPEAT, SCHEME, permutation_p_value
from umbif.eval.splits import SCHEMES
from umbif.metrics import (
    METRIC_NAMES,
    binary_metrics,
    delong,
    patient_bootstrap_weights,
    percentile_interval,
    reliability_curve,
    roc_auc,
)
from umbif.utils import write_json

# One row per prediction a method makes; every method writes this table and the metrics are
# computed from it alone, so methods compare on identical samples and folds.
PREDICTION_COLUMNS: tuple[str, ...] = (
    "method",  # e.g. "umbif-probe"
    "task",  # one of TASKS
    "scheme",  # "kfold" or "loso"
    "repeat",  # repeat index (kfold); 0 for loso
    "fold",  # fold index within the repeat
    "sample_id",
    "patient_id",
    "site",
    "y",  # 0/1 truth
    "score",  # predicted probability of the positive class
    "threshold",  # decision threshold chosen on that fold's training data; positive when score >= threshold
)
# Published reference figures (UMBIF on real multicentre data). Shown beside, never mixed with,
# results measured here.
REFERENCE: dict[str, dict[str, float]] = {
    "outcome": {"accuracy": 0.899, "auc": 0.815},
    "codeletion_1p19q": {"accuracy": 0.898, "auc": 0.916},
    "idh": {"accuracy": 0.829, "auc": 0.896},
    "mgmt": {"accuracy": 0.905, "auc": 0.859},
}

FORMAT = "umbif-metrics"
VERSION = 1
PER_SITE_METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "auc")
_KEY = ["method", "task", "scheme", "repeat", "sample_id"]  # one prediction per key
_BOOTSTRAP_CHUNK = 2_000_000  # weight-matrix elements scored at once


def _number(value: Any) -> float | None:
    """A JSON number: a Python float, or None for an undefined (NaN) value."""
    value = float(value)
    return None if math.isnan(value) else value


def _first_rows(frame: pd.DataFrame, mask: pd.Series, column: str) -> str:
    """``method/task/sample = value`` for the first few offending rows, for error messages."""
    rows = frame[mask].head(3)
    return "; ".join(f"{r.method}/{r.task}/{r.sample_id} {column}={r[column]!r}" for _, r in rows.iterrows())


def check_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """Check a predictions table and return it with clean types (text ids, int y/repeat/fold, float scores).

    Raises:
        ValueError: naming the column, the first offending rows and what to fix: missing columns,
            an unknown task or scheme, ``y`` not 0/1, scores not finite probabilities, thresholds
            not finite, two rows for one method/task/scheme/repeat/sample, or one sample with two
            labels or patients.
    """
    if not isinstance(predictions, pd.DataFrame):
        raise TypeError(f"predictions must be a pandas DataFrame with columns {PREDICTION_COLUMNS}")
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}; every method must write {list(PREDICTION_COLUMNS)}")
    if predictions.empty:
        raise ValueError("the predictions table is empty: no method produced predictions")
    frame = predictions[list(PREDICTION_COLUMNS)].copy()
    for column in ("method", "task", "scheme", "sample_id", "patient_id", "site"):
        frame[column] = frame[column].astype(str)
    for column, allowed in (("task", TASKS), ("scheme", SCHEMES)):
        bad = ~frame[column].isin(allowed)
        if bad.any():
            raise ValueError(f"predictions: {column} must be one of {allowed}; found {_first_rows(frame, bad, column)}")
    for column in ("y", "score", "threshold", "repeat", "fold"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    bad = ~frame["y"].isin([0, 1])
    if bad.any():
        raise ValueError(f"predictions: y must be 0 or 1 (1 = positive class); found {_first_rows(frame, bad, 'y')}")
    bad = ~np.isfinite(frame["score"]) | (frame["score"] < 0) | (frame["score"] > 1)
    if bad.any():
        raise ValueError(
            f"predictions: score must be a probability in [0, 1]; {int(bad.sum())} row(s) are not, "
            f"e.g. {_first_rows(frame, bad, 'score')}"
        )
    bad = ~np.isfinite(frame["threshold"])
    if bad.any():
        raise ValueError(f"predictions: threshold must be finite; found {_first_rows(frame, bad, 'threshold')}")
    for column in ("repeat", "fold"):
        bad = ~np.isfinite(frame[column]) | (frame[column] < 0) | (frame[column] % 1 != 0)
        if bad.any():
            raise ValueError(f"predictions: {column} must be an integer >= 0; found {_first_rows(frame, bad, column)}")
    frame = frame.astype({"y": int, "repeat": int, "fold": int, "score": float, "threshold": float})
    bad = frame.duplicated(_KEY, keep=False)
    if bad.any():
        raise ValueError(
            "predictions: more than one row for a method/task/scheme/repeat/sample, e.g. "
            f"{_first_rows(frame, bad, 'repeat')}; keep one prediction per sample and repeat"
        )
    for column in ("y", "patient_id"):
        varies = frame.groupby(["task", "sample_id"])[column].transform("nunique") > 1
        if varies.any():
            raise ValueError(
                f"predictions: a sample has more than one {column} across rows: {_first_rows(frame, varies, column)}; "
                "all methods must predict the same samples (same tasks.labelled_samples)"
            )
    return frame.reset_index(drop=True)


def _nanmean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over ``axis`` of the defined (finite) values; NaN where none is (no warning)."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis)
    count = finite.sum(axis)
    return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)


def _metrics_with_intervals(
    frame: pd.DataFrame, n_bootstrap: int, level: float, seed: int
) -> dict[str, dict[str, float | None]]:
    """Repeat-averaged point values and patient-bootstrap intervals of :data:`METRIC_NAMES`."""
    counts, patient_index = patient_bootstrap_weights(frame["patient_id"].to_numpy(), n_bootstrap, seed)
    points, replicates = [], []
    for rows in frame.groupby("repeat").indices.values():
        y, score, threshold = (frame[c].to_numpy()[rows] for c in ("y", "score", "threshold"))
        point = binary_metrics(y, score, threshold)
        points.append([point[name] for name in METRIC_NAMES])
        chunk = max(1, _BOOTSTRAP_CHUNK // len(rows))
        parts = [
            binary_metrics(y, score, threshold, sample_weight=counts[i : i + chunk][:, patient_index[rows]])
            for i in range(0, n_bootstrap, chunk)
        ]
        replicates.append([np.concatenate([p[name] for p in parts]) for name in METRIC_NAMES])
    value = _nanmean(np.asarray(points, dtype=np.float64))  # [M]
    boot = _nanmean(np.asarray(replicates, dtype=np.float64))  # [M, B]
    out = {}
    for m, name in enumerate(METRIC_NAMES):
        low, high = percentile_interval(boot[m], level) if np.isfinite(value[m]) else (math.nan, math.nan)
        out[name] = {"value": _number(value[m]), "low": _number(low), "high": _number(high)}
    return out


def _curves(first: pd.DataFrame, bins: int) -> tuple[dict[str, list], dict[str, list]]:
    """ROC points and reliability curve of one repeat's pooled predictions."""
    y, score = first["y"].to_numpy(), first["score"].to_numpy()
    roc: dict[str, list] = {"fpr": [], "tpr": []}
    if 0 < y.sum() < y.size:  # a ROC needs both classes
        fpr, tpr, _ = roc_curve(y, score)
        roc = {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
    curve = reliability_curve(y, score, bins=bins)
    reliability = {
        "mean_score": [float(v) for v in curve["mean_score"]],
        "fraction_positive": [float(v) for v in curve["fraction_positive"]],
        "count": [int(v) for v in curve["count"]],
    }
    return roc, reliability


def _per_site(first: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for site, rows in first.groupby("site", sort=True):
        m = binary_metrics(rows["y"], rows["score"], rows["threshold"].to_numpy())
        out.append(
            {"site": str(site), "n": int(m["n"]), "n_positive": int(m["n_positive"])}
            | {name: _number(m[name]) for name in PER_SITE_METRICS}
        )
    return out


def _mean_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """Each sample's score averaged over repeats, with its label (index ``sample_id``)."""
    return frame.groupby("sample_id").agg(y=("y", "first"), score=("score", "mean"))


def _comparison(frame: pd.DataFrame, reference: pd.DataFrame | None, against: str) -> dict[str, Any] | None:
    """DeLong of ``frame``'s method vs. the reference method on their shared samples and repeats (None if not
    testable)."""
    if reference is None:
        return None
    repeats = sorted(set(frame["repeat"]) & set(reference["repeat"]))
    if not repeats:
        return None
    ours = _mean_scores(frame[frame["repeat"].isin(repeats)])
    theirs = _mean_scores(reference[reference["repeat"].isin(repeats)])
    shared = ours.merge(theirs, left_index=True, right_index=True, suffixes=("", "_against"))  # inner join
    y = shared["y"].to_numpy()
    if min(int(y.sum()), int(y.size - y.sum())) < 2:
        return None  # DeLong needs two samples of each class
    result = delong(y, shared["score"].to_numpy(), shared["score_against"].to_numpy())
    return {
        "against": against,
        "n": int(y.size),
        "repeats": len(repeats),
        "auc": result.auc_a,
        "auc_against": result.auc_b,
        "difference": result.difference,
        "p_value": result.p_value,
    }


def _permutation_fields(rows: pd.DataFrame, null: Any) -> dict[str, Any]:
    """``p_permutation``, ``n_permutations`` and the null's mean and SD of one result (all None without a test)."""
    if null is None or rows["scheme"].iloc[0] != SCHEME:
        return {"p_permutation": None, "n_permutations": None, "null_auc_mean": None, "null_auc_sd": None}
    null = np.asarray(null, dtype=np.float64)
    first = rows[rows["repeat"] == REPEAT]
    observed = float(roc_auc(first["y"].to_numpy(), first["score"].to_numpy())) if len(first) else math.nan
    return {
        "p_permutation": permutation_p_value(observed, null),
        "n_permutations": int(null.size),
        "null_auc_mean": _number(null.mean()) if null.size else None,
        "null_auc_sd": _number(null.std(ddof=1)) if null.size > 1 else None,
    }


def summarize(
    predictions: pd.DataFrame,
    *,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    reliability_bins: int = 10,
    reference_method: str | None = None,
    permutation_null: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The ``results`` list of ``metrics.json``: one entry per method, task and scheme in ``predictions``.

    Args:
        predictions: the predictions table (:data:`PREDICTION_COLUMNS`).
        n_bootstrap: patient-bootstrap replicates per result.
        level: coverage of the intervals.
        seed: bootstrap seed; every result uses it, so methods scored on the same patients see
            the same resamples (paired intervals).
        reliability_bins: uniform bins of the reliability curve.
        reference_method: the method every other is compared to with DeLong's test (its own
            ``comparison`` and all comparisons when None are null).
        permutation_null: ``{method: {task: null AUCs}}`` of the label-permutation tests (k-fold
            repeat 0); a method or task without one gets null permutation fields.

    Returns:
        the results, ordered by method (first appearance), task (:data:`TASKS` order) and scheme;
        undefined values are None.

    Example:
        >>> results = summarize(predictions, n_bootstrap=1000, reference_method="umbif-probe")
        >>> results[0]["metrics"]["auc"]
        {'value': 0.87, 'low': 0.8, 'high': 0.93}
    """
    frame = check_predictions(predictions)
    methods = list(dict.fromkeys(frame["method"]))
    if reference_method is not None and reference_method not in methods:
        raise ValueError(f"reference method {reference_method!r} has no predictions; choose from {methods}")
    groups = frame.groupby(["method", "task", "scheme"], sort=False)
    results = []
    for method in methods:
        for task in TASKS:
            for scheme in SCHEMES:
                if (method, task, scheme) not in groups.groups:
                    continue
                rows = groups.get_group((method, task, scheme)).sort_values(["repeat", "sample_id"])
                first = rows[rows["repeat"] == rows["repeat"].min()]
                samples = rows.drop_duplicates("sample_id")
                roc, reliability = _curves(first, reliability_bins)
                reference = None
                if reference_method is not None and method != reference_method:
                    key = (reference_method, task, scheme)
                    reference = groups.get_group(key) if key in groups.groups else None
                results.append(
                    {
                        "method": method,
                        "task": task,
                        "scheme": scheme,
                        "n_samples": len(samples),
                        "n_patients": int(rows["patient_id"].nunique()),
                        "n_positive": int(samples["y"].sum()),
                        "repeats": int(rows["repeat"].nunique()),
                        "folds": int(rows.groupby("repeat")["fold"].nunique().max()),
                        "metrics": _metrics_with_intervals(rows, n_bootstrap, level, seed),
                        "roc": roc,
                        "reliability": reliability,
                        "per_site": _per_site(first),
                        "comparison": _comparison(rows, reference, reference_method or ""),
                    }
                    | _permutation_fields(rows, (permutation_null or {}).get(method, {}).get(task))
                )
    return results


def metrics_document(
    predictions: pd.DataFrame,
    *,
    methods: dict[str, dict[str, Any]],
    provenance: dict[str, Any],
    cohort: dict[str, Any] | None = None,
    oracle_auc: dict[str, float] | None = None,
    reference_method: str | None = None,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    reliability_bins: int = 10,
    permutation_null: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole ``metrics.json`` document (format ``umbif-metrics`` version 1).

    Args:
        predictions: the predictions table of all methods.
        methods: ``{method: {"description": str, "wall_time_s": float | None, "notes": [str]}}`` for every
            method in ``predictions`` (``notes``, optional: how it was run, e.g. fewer repeats, no
            permutation test and why).
        provenance: :func:`umbif.provenance.provenance` of the evaluation.
        cohort: ``{"manifest": file name, "n_exams": int, "sites": [...]}`` or None (written as {}).
        oracle_auc: ``{task: AUC of the generating model}`` for a synthetic cohort, else None ({}); a task whose
            value is None or NaN (undefined: one class) is left out.
        reference_method, n_bootstrap, level, seed, reliability_bins, permutation_null: see :func:`summarize`.

    Returns:
        the document; published figures (:data:`REFERENCE`) under ``"reference"``.

    Example:
        >>> write_metrics(metrics_document(predictions, methods=descriptions, provenance=provenance()), path)
    """
    present = list(dict.fromkeys(check_predictions(predictions)["method"]))
    undescribed = [m for m in present if m not in methods or "description" not in methods[m]]
    if undescribed:
        raise ValueError(f"methods {undescribed} have predictions but no entry {{'description': ...}} in methods")
    return {
        "format": FORMAT,
        "version": VERSION,
        "provenance": provenance,
        "cohort": dict(cohort or {}),
        "bootstrap": {"n": int(n_bootstrap), "level": float(level), "unit": "patient", "seed": int(seed)},
        "reference": copy.deepcopy(REFERENCE),
        "oracle_auc": {  # an undefined oracle AUC (a task with one class in a tiny cohort) is left out
            task: float(v) for task, v in (oracle_auc or {}).items() if v is not None and math.isfinite(v)
        },
        "methods": {
            m: {
                "description": str(methods[m]["description"]),
                "wall_time_s": None if methods[m].get("wall_time_s") is None else float(methods[m]["wall_time_s"]),
                "notes": [str(note) for note in methods[m].get("notes") or []],
            }
            for m in present
        },
        "reference_method": reference_method,
        "results": summarize(
            predictions,
            n_bootstrap=n_bootstrap,
            level=level,
            seed=seed,
            reliability_bins=reliability_bins,
            reference_method=reference_method,
            permutation_null=permutation_null,
        ),
    }


def _nonfinite(value: Any, where: str) -> str | None:
    """The JSON path of the first NaN or infinity in ``value``, or None."""
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        items = ((f"{where}.{k}", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for path, v in items if (found := _nonfinite(v, path))), None)


def write_metrics(document: dict[str, Any], path: str | Path) -> Path:
    """Write a metrics document as JSON atomically.

    Undefined values must already be None (JSON null), as :func:`metrics_document` makes them; a NaN
    or infinity left anywhere is an error naming where, never written as invalid JSON.

    Example:
        >>> write_metrics(document, "runs/eval/metrics.json")
    """
    if document.get("format") != FORMAT:
        raise ValueError(f"not a metrics document (format {document.get('format')!r}); build it with metrics_document")
    found = _nonfinite(document, "document")
    if found:
        raise ValueError(f"{path}: {found} is NaN or infinite; undefined values must be None (JSON null)")
    path = Path(path)
    write_json(path, document, indent=1)
    return path
