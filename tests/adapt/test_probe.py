"""The linear probe: inner-CV regularisation (one-standard-error rule), a threshold from training data only,
exported heads; the batched refits of the permutation test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labelled_cohort import TinyCohort, build
from umbif.adapt.classifier import load_classifier
from umbif.adapt.embed import Embeddings, embed_exams
from umbif.adapt.probe import (
    DEFAULT_CS,
    LinearProbe,
    ProbeMethod,
    choose_c,
    fit_classifier,
    fit_logistic_many,
    inner_splits,
    sample_features,
)
from umbif.data.samples import labelled_samples


def _data(n: int = 80, features: int = 20, signal: float = 1.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, features))
    X[:, 0] += signal * y
    return X, y


def test_probe_learns_and_generalises() -> None:
    X, y = _data(signal=2.0)
    X_test, y_test = _data(seed=1, signal=2.0)
    probe = LinearProbe(inner_folds=4).fit(X, y)
    assert roc_auc_score(y_test, probe.predict_proba(X_test)[:, 1]) > 0.85
    assert probe.C_ in probe.Cs and 0.0 <= probe.threshold_ <= 1.0 and probe.inner_auc_ > 0.8
    np.testing.assert_array_equal(probe.predict(X_test), probe.predict_proba(X_test)[:, 1] >= probe.threshold_)


def test_probe_equals_sklearn_at_the_chosen_c() -> None:
    X, y = _data()
    probe = LinearProbe(inner_folds=3).fit(X, y)
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(C=probe.C_, class_weight="balanced", max_iter=5000).fit(scaler.transform(X), y)
    np.testing.assert_allclose(probe.predict_proba(X), model.predict_proba(scaler.transform(X)), atol=1e-6)
    weight, bias, mean, scale = probe.linear_parts()
    manual = 1 / (1 + np.exp(-(((X - mean) / scale) @ weight + bias)))
    np.testing.assert_allclose(manual, probe.predict_proba(X)[:, 1], atol=1e-5)


def test_threshold_does_not_depend_on_test_data() -> None:
    X, y = _data()
    a = LinearProbe(inner_folds=3, seed=3).fit(X, y)
    b = LinearProbe(inner_folds=3, seed=3).fit(X, y)
    assert a.threshold_ == b.threshold_ and a.C_ == b.C_  # deterministic given the training data


def test_one_se_rule_chooses_the_strongest_c_within_one_standard_error_of_the_best() -> None:
    """Checked against a direct computation with scikit-learn on the probe's inner folds."""
    X, y = _data(n=48, features=30, signal=1.5, seed=0)
    probe = LinearProbe(inner_folds=5).fit(X, y)
    best = LinearProbe(inner_folds=5, c_rule="best").fit(X, y)
    splits = inner_splits(y, np.arange(len(y)), folds=5, seed=0)
    auc = np.array(
        [
            [
                roc_auc_score(y[te], make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced",
                              max_iter=5000)).fit(X[tr], y[tr]).predict_proba(X[te])[:, 1])
                for tr, te in splits
            ]
            for C in DEFAULT_CS
        ]
    )  # fmt: skip
    mean = auc.mean(1)
    top = int(np.argmax(mean))
    se = auc[top].std(ddof=1) / np.sqrt(auc.shape[1])
    expected = min(C for C, m in zip(DEFAULT_CS, mean, strict=True) if m >= mean[top] - se)
    assert best.C_ == best.best_C_ == DEFAULT_CS[top]
    assert pytest.approx(expected) == probe.C_ and probe.best_C_ == best.C_
    assert probe.C_ < best.C_  # this case was chosen because the rules differ
    assert probe.inner_auc_ == pytest.approx(mean[DEFAULT_CS.index(probe.C_)])


@pytest.mark.parametrize(
    ("fold_auc", "rule", "expected"),
    [
        ([[0.60, 0.62], [0.70, 0.74], [0.72, 0.76]], "best", 2),
        ([[0.60, 0.62], [0.71, 0.75], [0.72, 0.76]], "one-se", 1),  # 0.73 >= 0.74 - 0.02
        ([[0.60, 0.62], [0.70, 0.74], [0.70, 0.78]], "one-se", 1),  # wider spread, larger SE
        ([[0.80, 0.80], [0.70, 0.90], [0.60, 0.60]], "one-se", 0),  # ties in the mean: the smaller C
        ([[np.nan, 0.70], [0.74, 0.76], [0.60, np.nan]], "one-se", 1),  # undefined folds left out
    ],
)
def test_choose_c(fold_auc: list, rule: str, expected: int) -> None:
    assert choose_c([0.01, 0.1, 1.0], np.array(fold_auc), rule) == expected


def test_choose_c_refuses_an_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown C rule 'median'"):
        choose_c([0.1, 1.0], np.ones((2, 3)), "median")


@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
@pytest.mark.parametrize("class_weight", ["balanced", None])
@pytest.mark.parametrize("shape", [(40, 12), (30, 60)])  # more samples than features, and fewer
def test_batched_logistic_regression_equals_sklearn(C: float, class_weight: str | None, shape: tuple) -> None:
    rng = np.random.default_rng(1)
    X = StandardScaler().fit_transform(rng.normal(size=shape))
    y = (X[:, 0] + rng.normal(size=shape[0]) > 0.3).astype(int)
    Y = np.stack([y, rng.permutation(y), rng.permutation(y)])
    coef, intercept = fit_logistic_many(X, Y, C, class_weight)
    for row, labels in enumerate(Y):
        model = LogisticRegression(C=C, class_weight=class_weight, tol=1e-10, max_iter=10_000).fit(X, labels)
        np.testing.assert_allclose(X @ coef[row] + intercept[row], model.decision_function(X), rtol=1e-5, atol=1e-5)


def test_batched_logistic_regression_takes_one_matrix_per_label_vector() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3, 30, 8))
    Y = (rng.uniform(size=(3, 30)) > 0.5).astype(int)
    Y[2] = 1  # one class only: no finite solution, a constant score
    coef, intercept = fit_logistic_many(X, Y, 0.5)
    for row in range(2):
        model = LogisticRegression(C=0.5, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(X[row], Y[row])
        np.testing.assert_allclose(coef[row], model.coef_[0], atol=1e-5)
    assert not coef[2].any() and intercept[2] == 0.0
    with pytest.raises(ValueError, match="do not fit labels"):
        fit_logistic_many(X[0], Y[:, :20], 1.0)


def test_permutation_scorer_refits_the_probe_at_its_chosen_c() -> None:
    """With the true labels, the scorer reproduces the probe's own test scores (log-odds); at this tiny C
    sklearn's lbfgs stops before the intercept settles, so the scores are compared up to a constant
    (which changes no AUC)."""
    X, y = _data(n=60, features=16, signal=1.0, seed=4)
    ids = [f"{i:02d}" for i in range(60)]
    table = pd.DataFrame({"sample_id": ids, "patient_id": ids, "exam_id": ids, "baseline_exam_id": "", "y": y})
    method = ProbeMethod(Embeddings(tuple(table["exam_id"]), X.astype(np.float32), "test"), inner_folds=3)
    train, test = {"idh": table.iloc[:45].reset_index(drop=True)}, {"idh": table.iloc[45:].reset_index(drop=True)}
    scores, _ = method.fit_predict(train, test)["idh"]
    for remembered in (True, False):  # the C of this session's fit, or a refit on the true labels
        if not remembered:
            method.chosen_c.clear()
        log_odds = method.permutation_scorer(train, test)["idh"](y[None, :45])[0]
        expected = np.log(scores / (1 - scores))
        assert method.chosen_c[("idh", tuple(ids[:45]))] == 1e-4 and np.ptp(expected) > 1e-3
        np.testing.assert_allclose(log_odds - log_odds.mean(), expected - expected.mean(), atol=1e-6)


def test_inner_folds_keep_patients_together() -> None:
    y = np.array([0, 0, 1, 1] * 6)
    groups = np.repeat(np.arange(12), 2)  # two samples per patient, same label
    for train, test in inner_splits(y, groups, folds=5, seed=0):
        assert not set(groups[train]) & set(groups[test])


def test_too_few_patients_of_a_class_is_refused() -> None:
    with pytest.raises(ValueError, match="1 positive and 5 negative"):
        inner_splits(np.array([0, 0, 0, 0, 0, 1]), np.arange(6), folds=5, seed=0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> TinyCohort:
    return build(tmp_path_factory.mktemp("cohort"), patients=16, sites=2)


def test_fit_classifier_writes_a_folder_predict_can_load(cohort: TinyCohort, tmp_path: Path) -> None:
    out = tmp_path / "model"
    report = fit_classifier(cohort.manifest.table, cohort.cache, cohort.encoder, out, tasks=("idh", "outcome"))
    assert set(report["tasks"]) == {"idh", "outcome"}
    classifier = load_classifier(out)
    assert classifier.method == "probe" and classifier.image_size == (32, 32, 32)
    assert classifier.heads["outcome"].inputs == "pair" and classifier.heads["idh"].inputs == "exam"
    # the stored head reproduces a probe refitted on the same embeddings and samples
    samples = labelled_samples(cohort.manifest.table, "idh").table
    embeddings = embed_exams(cohort.encoder, cohort.cache, list(samples["exam_id"]))
    X = sample_features(embeddings, samples, "idh")
    probe = LinearProbe().fit(X, samples["y"].to_numpy(), samples["patient_id"].to_numpy())
    np.testing.assert_allclose(classifier.heads["idh"].head.score(X), probe.predict_proba(X)[:, 1], atol=1e-5)
    assert classifier.heads["idh"].threshold == pytest.approx(probe.threshold_)
    assert report["tasks"]["idh"]["n_train"] == len(samples) == 16
