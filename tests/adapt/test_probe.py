"""The linear probe: inner-CV regularisation, a threshold from training data only, exported heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from labelled_cohort import TinyCohort, build
from umbif.adapt.classifier import load_classifier
from umbif.adapt.embed import embed_exams
from umbif.adapt.probe import LinearProbe, fit_classifier, inner_splits, sample_features
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
