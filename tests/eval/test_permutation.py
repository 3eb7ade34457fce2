"""The label-permutation test: patient-level shuffles, the p-value, and the null distribution checked
against scikit-learn (cross_val_predict on the same folds and shuffles; permutation_test_score)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict, permutation_test_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from umbif.adapt.embed import Embeddings
from umbif.adapt.probe import ProbeMethod
from umbif.eval.permutation import (
    null_distribution,
    patient_permutations,
    permutation_p_value,
    permutation_rng,
)

C = 0.1


def test_shuffles_move_whole_patients_between_patients_with_as_many_samples() -> None:
    patients = np.array(["a", "b", "a", "c", "d", "e", "e", "f", "b", "g"])  # a, b, e: 2 samples; others 1
    order = patient_permutations(patients, 300, np.random.default_rng(0))
    assert order.shape == (300, 10)
    assert all(sorted(row) == list(range(10)) for row in order)  # each shuffle is a permutation of the samples
    for row in order:
        for patient in np.unique(patients):
            source = patients[row[patients == patient]]
            assert len(set(source)) == 1  # a patient's samples take one patient's labels together
            assert (patients == source[0]).sum() == (patients == patient).sum()
    assert len({tuple(row) for row in order}) > 100  # shuffles differ (3! x 4! = 144 possible)
    np.testing.assert_array_equal(order, patient_permutations(patients, 300, np.random.default_rng(0)))


def test_one_sample_per_patient_is_a_plain_permutation() -> None:
    order = patient_permutations([f"p{i}" for i in range(8)], 5, np.random.default_rng(1))
    expected = np.random.default_rng(1).permuted(np.broadcast_to(np.arange(8), (5, 8)), axis=1)
    np.testing.assert_array_equal(order, expected)


def test_p_value() -> None:
    assert permutation_p_value(0.8, [0.5, 0.6, 0.8, 0.9]) == pytest.approx(3 / 5)  # ties count against
    assert permutation_p_value(0.1 + 0.2, [0.3, 0.1]) == pytest.approx(2 / 3)  # 0.3 < 0.1 + 0.2 in floats: a tie
    assert permutation_p_value(0.95, np.full(199, 0.5)) == pytest.approx(1 / 200)  # never 0
    assert permutation_p_value(None, [0.5]) is None and permutation_p_value(0.7, []) is None
    assert permutation_rng(0, "idh").random() != permutation_rng(0, "mgmt").random()


def _cohort(n: int, signal: float, seed: int) -> tuple[pd.DataFrame, np.ndarray, list]:
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    X = rng.normal(size=(n, 10))
    X[:, 0] += signal * y
    ids = [f"p{i:03d}" for i in range(n)]
    table = pd.DataFrame({"sample_id": ids, "patient_id": ids, "exam_id": ids, "baseline_exam_id": "", "y": y})
    folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y))
    return table, X, folds


@dataclass
class FixedLogistic:
    """A method whose permutation scorer is a plain sklearn logistic regression at a fixed C."""

    X: np.ndarray

    def permutation_scorer(self, train: dict, test: dict) -> dict:
        rows = {
            key: [int(s[1:]) for s in frames["idh"]["sample_id"]] for key, frames in (("train", train), ("test", test))
        }
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced"))

        def score(Y: np.ndarray) -> np.ndarray:
            return np.stack([model.fit(self.X[rows["train"]], y).decision_function(self.X[rows["test"]]) for y in Y])

        return {"idh": score}


def test_null_distribution_equals_sklearn_cross_val_predict_on_the_same_folds_and_shuffles() -> None:
    table, X, folds = _cohort(40, 1.0, seed=0)
    null = null_distribution(FixedLogistic(X), {"idh": table}, [{"idh": f} for f in folds], 10, seed=5)["idh"]
    order = patient_permutations(table["patient_id"], 10, permutation_rng(5, "idh"))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced"))
    y = table["y"].to_numpy()
    expected = [
        roc_auc_score(y[o], cross_val_predict(model, X, y[o], cv=folds, method="decision_function")) for o in order
    ]
    np.testing.assert_allclose(null, expected)


def _probe_p_value(table: pd.DataFrame, X: np.ndarray, folds: list, n: int, search: bool = True) -> float:
    """The probe's pooled out-of-fold AUC judged against its permutation null: the real probe's (inner search
    of C), or with ``search=False`` the fixed-C refit's own (an exact permutation test)."""
    method = ProbeMethod(Embeddings(tuple(table["exam_id"]), X, "test"), inner_folds=3)
    pooled, y = np.zeros(len(table)), table["y"].to_numpy()
    for train, test in folds:
        parts = {"idh": table.iloc[train]}, {"idh": table.iloc[test]}
        if search:
            pooled[test] = method.fit_predict(*parts)["idh"][0]
        else:
            method.chosen_c[("idh", tuple(table["sample_id"].iloc[train]))] = C
            pooled[test] = method.permutation_scorer(*parts)["idh"](y[None, train])[0]
    null = null_distribution(method, {"idh": table}, [{"idh": f} for f in folds], n, seed=0)["idh"]
    return permutation_p_value(roc_auc_score(y, pooled), null)


@pytest.mark.filterwarnings("ignore:Only one class is present")  # sklearn: a shuffled test fold of one class
@pytest.mark.parametrize(("signal", "seed"), [(2.0, 1), (0.0, 2)])
def test_probe_p_values_agree_with_sklearn_permutation_test_score(signal: float, seed: int) -> None:
    """A strong signal: both p < 0.01; pure noise: both p > 0.05 (sklearn scores the mean per-fold AUC
    of a fixed-C logistic regression, so the values agree in size, not exactly)."""
    table, X, folds = _cohort(48, signal, seed)
    ours = _probe_p_value(table, X, folds, n=100)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced"))
    with threadpool_limits(limits=1):
        _, _, reference = permutation_test_score(
            model, X, table["y"], cv=folds, n_permutations=100, scoring="roc_auc", random_state=0
        )
    if signal:
        assert ours < 0.01 and reference < 0.01
    else:
        assert ours > 0.05 and reference > 0.05


def test_p_values_of_pure_noise_are_roughly_uniform() -> None:
    p = np.array([_probe_p_value(*_cohort(30, 0.0, seed), n=99, search=False) for seed in range(40)])
    assert 0.35 < p.mean() < 0.65 and (p <= 0.05).sum() <= 6 and (p > 0.5).sum() >= 12
