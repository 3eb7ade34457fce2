"""Binary-classification metrics, thresholds, DeLong's test and the patient-level bootstrap.

Pure functions with the data first, as in scikit-learn: ``metric(y_true, y_score, ...)``. Two things
are written here by hand rather than taken from scikit-learn, because the bootstrap evaluates them
thousands of times:

- :func:`roc_auc` and :func:`binary_metrics` accept a *matrix* of sample weights ``[B, N]`` (one row
  per bootstrap replicate) and return ``[B]`` values in one vectorised pass; a patient-level
  bootstrap is then a weight matrix of resampled patient counts (:func:`patient_bootstrap_weights`).
- :func:`delong` (DeLong et al. 1988, the fast midrank algorithm of Sun & Xu 2014), which
  scikit-learn does not have.

Undefined values (AUC with one class, PPV with no predicted positive, ...) are ``nan`` here;
:mod:`umbif.eval.summary` writes them as JSON ``null``.

Example::

    m = binary_metrics(y, score, threshold=0.5)                # {"accuracy": 0.81, "auc": 0.88, ...}
    t = choose_threshold(y_train, score_train, rule="youden")  # on training data only
    p = delong_test(y, score_a, score_b)                       # paired AUC difference
    ci = bootstrap_ci(roc_auc, y, score, groups=patient_ids)   # Interval(value, low, high)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_curve

METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "sensitivity",
    "specificity",
    "auc",
    "balanced_accuracy",
    "ppv",
    "npv",
    "brier",
)
THRESHOLD_RULES: tuple[str, ...] = ("youden", "sensitivity")
_BOOTSTRAP_CHUNK = 2_000_000  # weight-matrix elements evaluated at once (bounds memory to ~16 MB a matrix)


def _check_binary(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` as 0/1 floats and ``y_score`` as finite floats, both 1-D of one length."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but y_score has {s.size}; give one score per sample")
    if not np.isin(y, (0.0, 1.0)).all():
        bad = np.unique(y[~np.isin(y, (0.0, 1.0))])[:5]
        raise ValueError(f"y_true must be 0 or 1 (1 = positive class); found {bad.tolist()}")
    if not np.isfinite(s).all():
        raise ValueError(f"y_score has {int((~np.isfinite(s)).sum())} non-finite value(s) (NaN or inf)")
    return y, s


def _check_weights(sample_weight: Any, n: int) -> np.ndarray | None:
    """``None`` or weights ``[N]`` / ``[B, N]`` as non-negative floats."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise ValueError(f"sample_weight has shape {w.shape}; expected [{n}] or [B, {n}] (one weight per sample)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    return w


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with ``nan`` where ``den`` is 0 (an undefined rate), without warnings."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _scalar(value: np.ndarray) -> float | np.ndarray:
    return float(value) if np.ndim(value) == 0 else value


def roc_auc(y_true: Any, y_score: Any, sample_weight: Any = None) -> float | np.ndarray:
    """Area under the ROC curve (Mann-Whitney: P(score_pos > score_neg), ties count 1/2).

    Hand-written (not ``sklearn.metrics.roc_auc_score``) to score a whole matrix of bootstrap
    weight vectors in one pass: O(N log N) for the sort, then O(B N).

    Args:
        y_true: ``[N]`` labels, 1 = positive.
        y_score: ``[N]`` scores, higher = more likely positive.
        sample_weight: ``None``, ``[N]`` or ``[B, N]`` non-negative weights (a row per replicate).

    Returns:
        the AUC (a float; ``[B]`` for ``[B, N]`` weights); ``nan`` where one class has no weight.

    Example:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    y, s = _check_binary(y_true, y_score)
    w = _check_weights(sample_weight, y.size)
    w = np.ones(y.size) if w is None else w
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order], w[..., order]
    if y.size == 0:
        return _scalar(np.full(w.shape[:-1], np.nan))
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each run of tied scores
    pos = np.add.reduceat(w * y, starts, axis=-1)  # [..., U] positive weight per distinct score
    neg = np.add.reduceat(w, starts, axis=-1) - pos
    neg_below = np.cumsum(neg, axis=-1) - neg  # negative weight strictly below each score
    wins = (pos * (neg_below + 0.5 * neg)).sum(-1)
    return _scalar(_ratio(wins, pos.sum(-1) * neg.sum(-1)))


def binary_metrics(
    y_true: Any, y_score: Any, threshold: float | Any = 0.5, sample_weight: Any = None
) -> dict[str, float | np.ndarray]:
    """Accuracy, sensitivity, specificity, AUC, balanced accuracy, PPV, NPV and Brier score.

    Args:
        y_true: ``[N]`` labels, 1 = positive.
        y_score: ``[N]`` predicted probabilities of the positive class.
        threshold: a scalar, or ``[N]`` per-sample thresholds (each sample's own fold threshold);
            a sample is predicted positive when ``score >= threshold``.
        sample_weight: ``None``, ``[N]`` or ``[B, N]`` weights (a row per bootstrap replicate).

    Returns:
        ``{name: value}`` for :data:`METRIC_NAMES` plus ``n`` and ``n_positive`` (the weighted
        counts); values are floats, or ``[B]`` arrays for ``[B, N]`` weights. Undefined rates
        (e.g. sensitivity without positives, PPV without predicted positives, balanced accuracy
        with one class) are ``nan``.

    Example:
        >>> binary_metrics([0, 1, 1], [0.2, 0.7, 0.4], threshold=0.5)["sensitivity"]
        0.5
    """
    y, s = _check_binary(y_true, y_score)
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim > 1 or (t.ndim == 1 and t.size != y.size):
        raise ValueError(f"threshold has shape {t.shape}; give a scalar or one threshold per sample ({y.size})")
    if not np.isfinite(t).all():
        raise ValueError("threshold must be finite")
    w = _check_weights(sample_weight, y.size)
    predicted = (s >= t).astype(np.float64)
    counted = np.ones(y.size) if w is None else w
    # confusion counts as weighted sums: one matrix-vector product each for [B, N] weights
    tp = counted @ (y * predicted)
    fn = counted @ (y * (1.0 - predicted))
    tn = counted @ ((1.0 - y) * (1.0 - predicted))
    fp = counted @ ((1.0 - y) * predicted)
    n = tp + fn + tn + fp
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    out = {
        "accuracy": _ratio(tp + tn, n),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "auc": np.asarray(roc_auc(y, s, w)),
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "brier": _ratio(counted @ (s - y) ** 2, n),
        "n": n,
        "n_positive": tp + fn,
    }
    metrics: dict[str, float | np.ndarray] = {k: _scalar(v) for k, v in out.items()}
    if w is None:
        metrics["n"], metrics["n_positive"] = int(y.size), int(y.sum())
    return metrics


def choose_threshold(y_true: Any, y_score: Any, rule: str = "youden", target_sensitivity: float | None = None) -> float:
    """A decision threshold chosen on (training) data; predict positive when ``score >= threshold``.

    Args:
        y_true: ``[N]`` labels, 1 = positive; both classes must be present.
        y_score: ``[N]`` scores.
        rule: ``"youden"`` (maximise sensitivity + specificity - 1 over the ROC; ties go to the
            highest threshold) or ``"sensitivity"`` (the highest threshold whose sensitivity is at
            least ``target_sensitivity``).
        target_sensitivity: in (0, 1]; required by ``rule="sensitivity"``.

    Returns:
        the threshold, always one of the scores (so the chosen operating point is reproduced exactly).

    Example:
        >>> choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.8
    """
    y, s = _check_binary(y_true, y_score)
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; choose from {', '.join(THRESHOLD_RULES)}")
    if y.size == 0 or y.min() == y.max():
        raise ValueError(
            f"choose_threshold needs both classes in the training data; got {int(y.sum())} positive(s) "
            f"of {y.size} samples"
        )
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # the first point (threshold inf) predicts nothing
    if rule == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if target_sensitivity is None or not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"rule 'sensitivity' needs target_sensitivity in (0, 1]; got {target_sensitivity!r}")
    return float(thresholds[int(np.argmax(tpr >= target_sensitivity - 1e-12))])


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's paired comparison of two AUCs on the same samples."""

    auc_a: float
    auc_b: float
    covariance: np.ndarray  # [2, 2] covariance of (auc_a, auc_b)
    n: int  # samples compared
    difference: float  # auc_a - auc_b
    z: float
    p_value: float  # two-sided

    def difference_ci(self, level: float = 0.95) -> tuple[float, float]:
        """Normal-approximation confidence interval of ``auc_a - auc_b``."""
        variance = self.covariance[0, 0] + self.covariance[1, 1] - 2.0 * self.covariance[0, 1]
        half = float(norm.ppf(0.5 + level / 2.0) * np.sqrt(max(variance, 0.0)))
        return self.difference - half, self.difference + half


def delong_covariance(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several score vectors on the same samples and DeLong's covariance of them.

    Sun & Xu (2014) fast DeLong: the placement values come from midranks (O(K N log N)) rather
    than the O(N^2) pairwise comparisons.

    Args:
        y_true: ``[N]`` labels; both classes must be present.
        scores: ``[K, N]`` (or ``[N]``) scores of ``K`` classifiers.

    Returns:
        ``(aucs [K], covariance [K, K])``; ``sqrt(covariance[k, k])`` is the standard error of AUC k.

    Example:
        >>> aucs, cov = delong_covariance(y, np.stack([score_a, score_b]))
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.ndim != 2:
        raise ValueError(f"scores has shape {np.shape(scores)}; expected [K, N]")
    for row in s:
        _check_binary(y, row)
    positive = y == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 positive and 2 negative samples; got {m} and {n}")
    x_scores, y_scores = s[:, positive], s[:, ~positive]  # [K, m], [K, n]
    rank_x = rankdata(x_scores, axis=1)  # midranks within positives
    rank_y = rankdata(y_scores, axis=1)
    rank_all = rankdata(np.concatenate([x_scores, y_scores], axis=1), axis=1)
    v10 = (rank_all[:, :m] - rank_x) / n  # [K, m] fraction of negatives each positive beats
    v01 = 1.0 - (rank_all[:, m:] - rank_y) / m  # [K, n] fraction of positives above each negative
    aucs = v10.mean(axis=1)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong(y_true: Any, score_a: Any, score_b: Any) -> DeLongResult:
    """DeLong's test of the difference between two correlated AUCs (same samples, two scores).

    Args:
        y_true: ``[N]`` labels; at least 2 samples of each class.
        score_a, score_b: ``[N]`` scores of the two classifiers for the same samples.

    Returns:
        :class:`DeLongResult`; identical scores give ``p_value`` 1.

    Example:
        >>> delong(y, score_a, score_b).p_value
    """
    aucs, cov = delong_covariance(y_true, np.stack([np.ravel(score_a), np.ravel(score_b)]))
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if variance <= 1e-15:  # the two scores rank every pair alike: no evidence of a difference
        z = 0.0 if abs(difference) < 1e-12 else float(np.copysign(np.inf, difference))
    else:
        z = difference / np.sqrt(variance)
    p_value = float(2.0 * norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), cov, int(np.size(y_true)), difference, float(z), p_value)


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> float:
    """Two-sided p-value of DeLong's test that ``score_a`` and ``score_b`` have the same AUC.

    Example:
        >>> delong_test([0, 0, 1, 1, 0, 1], a, b)
    """
    return delong(y_true, score_a, score_b).p_value


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval (``nan`` where undefined)."""

    value: float
    low: float
    high: float


def patient_bootstrap_weights(groups: Any, n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resampled group (patient) counts: the weights of a cluster bootstrap.

    Each replicate draws as many groups as there are, with replacement; a sample's weight is the
    number of times its group was drawn, so all samples of a patient enter or leave together.

    Args:
        groups: ``[N]`` group id of each sample (e.g. patient ids).
        n_boot: number of replicates ``B``.
        seed: seed of the generator; the same seed and groups give the same replicates.

    Returns:
        ``(counts [B, G], index [N])``: counts per group (groups in sorted order) and each sample's
        group position, so ``counts[:, index]`` is the ``[B, N]`` sample-weight matrix.

    Example:
        >>> counts, index = patient_bootstrap_weights(["p1", "p1", "p2"], n_boot=3)
        >>> counts[:, index]  # [3, 3]; columns 0 and 1 are always equal
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    labels, index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if labels.size == 0:
        raise ValueError("no samples to bootstrap")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, labels.size, size=(n_boot, labels.size))  # [B, G] group positions drawn
    drawn += np.arange(n_boot)[:, None] * labels.size  # offset per replicate: one bincount counts all rows
    counts = np.bincount(drawn.ravel(), minlength=n_boot * labels.size).reshape(n_boot, labels.size)
    return counts.astype(np.float64), index


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates, ignoring replicates where the statistic is undefined."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(low), float(high)


def bootstrap_ci(
    statistic: Callable[..., Any],
    y_true: Any,
    y_score: Any,
    groups: Any = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    **kwargs: Any,
) -> Interval:
    """Patient-level (cluster) bootstrap percentile interval of a metric.

    Args:
        statistic: ``statistic(y_true, y_score, sample_weight=W, **kwargs)`` returning a float for
            ``W=None`` and ``[B]`` values for ``[B, N]`` weights, e.g. :func:`roc_auc`, or
            ``lambda y, s, **k: binary_metrics(y, s, **k)["sensitivity"]``.
        y_true, y_score: ``[N]`` labels and scores.
        groups: ``[N]`` patient id of each sample; ``None``: every sample is its own group (an
            ordinary bootstrap).
        n_boot: replicates.
        level: coverage of the interval, e.g. 0.95.
        seed: bootstrap seed.
        kwargs: passed to ``statistic`` (e.g. ``threshold=``).

    Returns:
        :class:`Interval` (value on all data, percentile interval over replicates where the
        statistic is defined).

    Example:
        >>> bootstrap_ci(roc_auc, y, score, groups=patient_ids, n_boot=2000, seed=1)
        Interval(value=0.84, low=0.77, high=0.9)
    """
    y, s = _check_binary(y_true, y_score)
    groups = np.arange(y.size) if groups is None else np.asarray(groups)
    if groups.shape != y.shape:
        raise ValueError(f"groups has {groups.size} values for {y.size} samples; give one group id per sample")
    counts, index = patient_bootstrap_weights(groups, n_boot, seed)
    value = float(statistic(y, s, sample_weight=None, **kwargs))
    chunk = max(1, _BOOTSTRAP_CHUNK // max(y.size, 1))
    replicates = np.concatenate(
        [
            np.asarray(statistic(y, s, sample_weight=counts[i : i + chunk][:, index], **kwargs), dtype=np.float64)
            for i in range(0, n_boot, chunk)
        ]
    )
    return Interval(value, *percentile_interval(replicates, level))


def reliability_curve(y_true: Any, y_score: Any, bins: int = 10) -> dict[str, np.ndarray]:
    """Calibration (reliability) curve on ``bins`` uniform bins of [0, 1].

    The bins match ``sklearn.calibration.calibration_curve(strategy="uniform")`` (right-closed
    edges), which does not return the bin counts the report needs, hence this version.

    Args:
        y_true: ``[N]`` labels.
        y_score: ``[N]`` probabilities in [0, 1].
        bins: number of uniform bins.

    Returns:
        ``{"mean_score", "fraction_positive", "count"}``, one entry per non-empty bin, in order.

    Example:
        >>> reliability_curve([0, 1, 1], [0.1, 0.8, 0.9], bins=2)["count"]
        array([1, 2])
    """
    y, s = _check_binary(y_true, y_score)
    if bins < 1:
        raise ValueError(f"bins must be at least 1; got {bins}")
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError("reliability_curve needs probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    bin_of = np.searchsorted(edges[1:-1], s)
    count = np.bincount(bin_of, minlength=bins)
    filled = count > 0
    return {
        "mean_score": np.bincount(bin_of, weights=s, minlength=bins)[filled] / count[filled],
        "fraction_positive": np.bincount(bin_of, weights=y, minlength=bins)[filled] / count[filled],
        "count": count[filled],
    }
