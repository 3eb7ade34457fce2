"""Metrics against scikit-learn / SciPy and brute-force loops written here."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap as scipy_bootstrap
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from umbif.metrics import (
    METRIC_NAMES,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    delong,
    delong_covariance,
    delong_test,
    patient_bootstrap_weights,
    reliability_curve,
    roc_auc,
)


def _data(n: int, seed: int, signal: float = 1.0, rounded: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities with some signal; ``rounded`` decimals create ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 0, 1  # both classes always present
    score = 1.0 / (1.0 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1.0, n))))
    return y, (np.round(score, rounded) if rounded is not None else score)


@pytest.mark.parametrize("rounded", [None, 1, 0])
@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_matches_sklearn_with_ties_and_weight_matrices(rounded: int | None, seed: int) -> None:
    y, score = _data(60, seed, rounded=rounded)
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    weights = np.random.default_rng(seed + 10).integers(0, 4, size=(5, y.size)).astype(float)
    expected = [roc_auc_score(y, score, sample_weight=w) for w in weights]
    np.testing.assert_allclose(roc_auc(y, score, weights), expected, atol=1e-12)
    assert roc_auc(y, score, weights[0]) == pytest.approx(expected[0], abs=1e-12)


def test_roc_auc_is_nan_with_one_class_and_per_replicate() -> None:
    assert np.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    # replicate 0 keeps only positives -> undefined; replicate 1 is the full data
    weights = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=float)
    out = roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], weights)
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.75)


@pytest.mark.parametrize("threshold", [0.5, 0.3, "per_sample"])
@pytest.mark.parametrize("seed", [0, 3])
def test_binary_metrics_match_sklearn(threshold: float | str, seed: int) -> None:
    y, score = _data(80, seed, rounded=2)
    t = np.random.default_rng(seed).uniform(0.3, 0.7, y.size) if threshold == "per_sample" else threshold
    predicted = (score >= t).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    m = binary_metrics(y, score, threshold=t)
    assert m["n"] == y.size and m["n_positive"] == int(y.sum())
    assert m["accuracy"] == pytest.approx((tp + tn) / y.size)
    assert m["sensitivity"] == pytest.approx(recall_score(y, predicted))
    assert m["specificity"] == pytest.approx(recall_score(y, predicted, pos_label=0))
    assert m["ppv"] == pytest.approx(precision_score(y, predicted)) == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert m["brier"] == pytest.approx(brier_score_loss(y, score))
    assert m["auc"] == pytest.approx(roc_auc_score(y, score))


def test_binary_metrics_weights_equal_repeated_samples() -> None:
    """Integer weights are the same as repeating samples: the bootstrap's view of a resample."""
    y, score = _data(30, 5, rounded=1)
    weights = np.random.default_rng(0).integers(0, 3, size=(4, y.size)).astype(float)
    batched = binary_metrics(y, score, 0.5, sample_weight=weights)
    for b, w in enumerate(weights):
        repeated = np.repeat(np.arange(y.size), w.astype(int))
        expected = binary_metrics(y[repeated], score[repeated], 0.5)
        for name in (*METRIC_NAMES, "n", "n_positive"):
            assert batched[name][b] == pytest.approx(expected[name], nan_ok=True), name


@pytest.mark.parametrize(
    ("y", "score", "undefined"),
    [
        ([1, 1, 1], [0.6, 0.7, 0.9], {"auc", "specificity", "balanced_accuracy", "npv"}),  # no negatives,
        ([0, 1, 0], [0.1, 0.2, 0.3], {"ppv"}),  # nothing predicted positive
        ([0, 1, 0], [0.9, 0.8, 0.7], {"npv"}),  # nothing predicted negative
    ],
)
def test_undefined_metrics_are_nan(y: list[int], score: list[float], undefined: set[str]) -> None:
    m = binary_metrics(y, score, 0.5)
    assert {k for k in METRIC_NAMES if np.isnan(m[k])} == undefined


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_true": [0, 2], "y_score": [0.1, 0.2]}, "0 or 1"),
        ({"y_true": [0, 1], "y_score": [0.1, np.nan]}, "non-finite"),
        ({"y_true": [0, 1], "y_score": [0.1]}, "one score per sample"),
        ({"y_true": [0, 1], "y_score": [0.1, 0.2], "threshold": [0.5, 0.5, 0.5]}, "one threshold per sample"),
        ({"y_true": [0, 1], "y_score": [0.1, 0.2], "sample_weight": [1.0, -1.0]}, "non-negative"),
    ],
)
def test_binary_metrics_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        binary_metrics(**kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_threshold_maximises_j_by_brute_force(seed: int) -> None:
    y, score = _data(50, seed, rounded=2)
    t = choose_threshold(y, score)

    def j(cut: float) -> float:
        m = binary_metrics(y, score, cut)
        return m["sensitivity"] + m["specificity"] - 1

    best = max(j(c) for c in np.unique(score))
    assert t in score and j(t) == pytest.approx(best)
    assert all(j(c) < best - 1e-12 for c in np.unique(score) if c > t)  # the highest of the best


@pytest.mark.parametrize("target", [0.5, 0.8, 1.0])
def test_sensitivity_threshold_is_the_highest_reaching_the_target(target: float) -> None:
    y, score = _data(60, 4, rounded=2)
    t = choose_threshold(y, score, rule="sensitivity", target_sensitivity=target)
    assert binary_metrics(y, score, t)["sensitivity"] >= target
    higher = np.unique(score)[np.unique(score) > t]
    assert all(binary_metrics(y, score, c)["sensitivity"] < target for c in higher)


@pytest.mark.parametrize(
    ("y", "kwargs", "match"),
    [
        ([1, 1, 1], {}, "both classes"),
        ([0, 1, 1], {"rule": "f1"}, "unknown threshold rule"),
        ([0, 1, 1], {"rule": "sensitivity"}, "target_sensitivity"),
    ],
)
def test_choose_threshold_errors(y: list[int], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        choose_threshold(y, [0.2, 0.5, 0.9], **kwargs)


def _delong_brute_force(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong (1988) with O(N^2) placement values, straight from the paper's definitions."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    v10 = np.zeros((len(scores), pos.size))
    v01 = np.zeros((len(scores), neg.size))
    for k, s in enumerate(scores):
        for a, i in enumerate(pos):
            for b, j in enumerate(neg):
                psi = 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
                v10[k, a] += psi / neg.size
                v01[k, b] += psi / pos.size
    k = len(scores)
    s10 = np.array([[np.sum((v10[r] - v10[r].mean()) * (v10[c] - v10[c].mean())) for c in range(k)] for r in range(k)])
    s01 = np.array([[np.sum((v01[r] - v01[r].mean()) * (v01[c] - v01[c].mean())) for c in range(k)] for r in range(k)])
    return v10.mean(axis=1), s10 / (pos.size - 1) / pos.size + s01 / (neg.size - 1) / neg.size


@pytest.mark.parametrize("rounded", [None, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_delong_matches_brute_force_placement_values(rounded: int | None, seed: int) -> None:
    y, a = _data(40, seed, rounded=rounded)
    _, b = _data(40, seed + 100, signal=0.3, rounded=rounded)
    c = np.round(a + np.random.default_rng(seed).normal(0, 0.2, a.size), 1)  # correlated with a, ties
    scores = np.stack([a, b, c])
    aucs, cov = delong_covariance(y, scores)
    brute_aucs, brute_cov = _delong_brute_force(y, scores)
    np.testing.assert_allclose(aucs, brute_aucs, atol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, s) for s in scores], atol=1e-12)
    np.testing.assert_allclose(cov, brute_cov, atol=1e-12)
    result = delong(y, a, c)
    variance = brute_cov[0, 0] + brute_cov[2, 2] - 2 * brute_cov[0, 2]
    z = (brute_aucs[0] - brute_aucs[2]) / np.sqrt(variance)
    assert result.p_value == pytest.approx(2 * norm.sf(abs(z)))
    low, high = result.difference_ci(0.95)
    assert low < result.difference < high and high - low == pytest.approx(2 * 1.959964 * np.sqrt(variance), rel=1e-5)


def test_delong_null_p_values_are_roughly_uniform() -> None:
    """Two equally good, correlated scores: about 5% of p-values fall below 0.05."""
    rng = np.random.default_rng(0)
    p_values = []
    for _ in range(400):
        y = rng.integers(0, 2, 80)
        latent = y + rng.normal(0, 1.0, y.size)
        a = latent + rng.normal(0, 0.7, y.size)
        b = latent + rng.normal(0, 0.7, y.size)
        p_values.append(delong_test(y, a, b))
    p = np.array(p_values)
    assert 0.02 <= (p < 0.05).mean() <= 0.09
    assert 0.40 <= (p < 0.5).mean() <= 0.60


def test_delong_identical_scores_give_p_one_and_clear_difference_tiny_p() -> None:
    y, a = _data(100, 7, signal=2.0)
    assert delong_test(y, a, a) == 1.0
    noise = np.random.default_rng(1).random(y.size)
    assert delong_test(y, a, noise) < 1e-6


def test_delong_needs_two_of_each_class() -> None:
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative"):
        delong_test([0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])


def test_bootstrap_weights_keep_patients_together_and_are_reproducible() -> None:
    groups = ["p2", "p1", "p1", "p3", "p2"]
    counts, index = patient_bootstrap_weights(groups, n_boot=200, seed=3)
    weights = counts[:, index]
    assert counts.shape == (200, 3) and (counts.sum(axis=1) == 3).all()
    np.testing.assert_array_equal(weights[:, 1], weights[:, 2])  # p1's two samples move together
    np.testing.assert_array_equal(weights[:, 0], weights[:, 4])
    again, _ = patient_bootstrap_weights(groups, n_boot=200, seed=3)
    other, _ = patient_bootstrap_weights(groups, n_boot=200, seed=4)
    np.testing.assert_array_equal(counts, again)
    assert not np.array_equal(counts, other)


def _pairwise_auc(y: np.ndarray, s: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC over all positive-negative pairs, vectorised over leading axes (SciPy's batches)."""
    pairs = y[..., :, None] * (1 - y[..., None, :])
    diff = s[..., :, None] - s[..., None, :]
    return (((diff > 0) + 0.5 * (diff == 0)) * pairs).sum((-1, -2)) / pairs.sum((-1, -2))


def _brier(y: np.ndarray, s: np.ndarray, **kwargs: object) -> object:
    return binary_metrics(y, s, **kwargs)["brier"]


@pytest.mark.parametrize(
    ("ours", "reference"),
    [(roc_auc, _pairwise_auc), (_brier, lambda y, s, axis=-1: ((s - y) ** 2).mean(axis))],
)
def test_one_sample_per_patient_is_an_ordinary_bootstrap(ours, reference) -> None:
    """Against SciPy's percentile bootstrap (its own resampling): equal up to Monte Carlo error."""
    y, score = _data(120, 2)
    interval = bootstrap_ci(ours, y, score, groups=[f"p{i}" for i in range(y.size)], n_boot=4000, seed=0)
    expected = scipy_bootstrap(
        (y.astype(float), score),
        reference,
        paired=True,
        vectorized=True,
        n_resamples=4000,
        batch=250,
        method="percentile",
        random_state=1,
    ).confidence_interval
    assert interval.value == pytest.approx(float(reference(y, score)))
    width = expected.high - expected.low
    assert interval.low == pytest.approx(expected.low, abs=0.06 * width)
    assert interval.high == pytest.approx(expected.high, abs=0.06 * width)


def _sensitivity(y: np.ndarray, s: np.ndarray, **kwargs: object) -> object:
    return binary_metrics(y, s, **kwargs)["sensitivity"]


@pytest.mark.parametrize(("statistic", "kwargs"), [(roc_auc, {}), (_sensitivity, {"threshold": 0.5})])
def test_duplicated_patients_do_not_shrink_the_patient_interval(statistic, kwargs: dict) -> None:
    """Four copies of each patient: the patient bootstrap is unchanged, a sample bootstrap is too narrow."""
    y, score = _data(60, 8)
    patients = np.arange(y.size)
    once = bootstrap_ci(statistic, y, score, groups=patients, n_boot=1000, seed=5, **kwargs)
    y4, s4, p4 = np.repeat(y, 4), np.repeat(score, 4), np.repeat(patients, 4)
    by_patient = bootstrap_ci(statistic, y4, s4, groups=p4, n_boot=1000, seed=5, **kwargs)
    by_sample = bootstrap_ci(statistic, y4, s4, groups=None, n_boot=1000, seed=5, **kwargs)
    assert (by_patient.low, by_patient.high) == pytest.approx((once.low, once.high), abs=1e-12)
    assert by_sample.high - by_sample.low < 0.7 * (by_patient.high - by_patient.low)


def test_bootstrap_ci_is_seeded_and_brackets_the_value() -> None:
    y, score = _data(50, 9)
    groups = np.arange(y.size) // 2
    a = bootstrap_ci(roc_auc, y, score, groups, n_boot=300, seed=11)
    b = bootstrap_ci(roc_auc, y, score, groups, n_boot=300, seed=11)
    c = bootstrap_ci(roc_auc, y, score, groups, n_boot=300, seed=12)
    assert a == b and a != c
    assert a.low < a.value < a.high
    wider = bootstrap_ci(roc_auc, y, score, groups, n_boot=300, seed=11, level=0.99)
    assert wider.low <= a.low and wider.high >= a.high


@pytest.mark.parametrize("bins", [5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_reliability_curve_matches_sklearn(bins: int, seed: int) -> None:
    y, score = _data(70, seed)
    score[:3] = [0.0, 0.2, 1.0]  # edge values fall into the same bins as in sklearn
    curve = reliability_curve(y, score, bins=bins)
    fraction, mean = calibration_curve(y, score, n_bins=bins, strategy="uniform")
    np.testing.assert_allclose(curve["fraction_positive"], fraction)
    np.testing.assert_allclose(curve["mean_score"], mean)
    assert curve["count"].sum() == y.size and (curve["count"] > 0).all()


def test_reliability_curve_rejects_non_probabilities() -> None:
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        reliability_curve([0, 1], [0.5, 1.5])


def test_roc_curve_threshold_semantics_agree() -> None:
    """choose_threshold's operating point is one of sklearn's ROC points (score >= threshold)."""
    y, score = _data(40, 6, rounded=2)
    t = choose_threshold(y, score)
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    m = binary_metrics(y, score, t)
    i = int(np.flatnonzero(thresholds == t)[0])
    assert (m["sensitivity"], 1 - m["specificity"]) == pytest.approx((tpr[i], fpr[i]))
