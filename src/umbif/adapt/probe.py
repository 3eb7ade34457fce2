"""Linear probing: logistic regression on frozen exam embeddings, regularisation chosen by inner CV.

A scikit-learn estimator (``fit`` returns self, fitted attributes end in ``_``), so it composes with
sklearn's tools. The regularisation is the strongest one whose inner-CV AUC is within one standard
error of the best (the one-standard-error rule): on ~50 training patients the best mean AUC alone
often picks almost no regularisation, i.e. fits noise. The decision threshold is chosen on the
*training* data only, from inner cross-validated predictions (a threshold read off the model's own
fit would be optimistic).

For label-permutation tests, :func:`fit_logistic_many` refits the same logistic regression to many
label vectors at once, and :class:`ProbeMethod` offers ``permutation_scorer`` (see
``umbif.eval.permutation``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from umbif.adapt.classifier import SavedLinearHead, SavedTaskHead, pair_array, save_classifier
from umbif.adapt.embed import Embeddings, embed_exams
from umbif.data.cache import Cache
from umbif.data.manifest import LABELS
from umbif.data.samples import PAIRED_TASKS, TASKS, build_cohort
from umbif.metrics import choose_threshold, roc_auc

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))  # inverse L2 strengths, one per decade
C_RULES: tuple[str, ...] = ("one-se", "best")  # how LinearProbe picks C from the inner-CV AUCs
Scorer = Callable[[np.ndarray], np.ndarray]  # permuted training labels [P, N] -> test scores [P, M]


def inner_splits(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped, stratified inner folds; fewer folds when a class has fewer patients than ``folds``.

    Raises ``ValueError`` when a class has fewer than two patients (no inner validation is possible).
    """
    per_class = [len(np.unique(groups[y == c])) for c in (0, 1)]
    if min(per_class) < 2:
        raise ValueError(
            f"too few patients to choose the regularisation: {per_class[1]} positive and {per_class[0]} "
            "negative in the training data (at least 2 of each are needed); add labelled exams or use fewer folds"
        )
    splitter = StratifiedGroupKFold(n_splits=min(folds, *per_class), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def choose_c(Cs: Sequence[float], fold_auc: np.ndarray, rule: str = "one-se") -> int:
    """The position in ``Cs`` of the chosen regularisation, from inner-CV AUCs ``fold_auc`` ``[len(Cs), folds]``.

    ``"best"``: the highest mean AUC (ties: the smallest C). ``"one-se"``: the smallest C (strongest
    regularisation) whose mean AUC is at least the best mean minus the best's standard error
    (sample SD of its fold AUCs / sqrt(folds); glmnet's ``lambda.1se``). Folds whose AUC is undefined
    (NaN: one class in the validation fold) are left out of the mean and the SE.

    Example:
        >>> choose_c([0.01, 1.0], np.array([[0.71, 0.75], [0.72, 0.76]]))  # mean 0.73 >= 0.74 - SE 0.02
        0
    """
    if rule not in C_RULES:
        raise ValueError(f"unknown C rule {rule!r}; choose from {', '.join(C_RULES)}")
    Cs, fold_auc = np.asarray(Cs, dtype=np.float64), np.asarray(fold_auc, dtype=np.float64)
    finite = np.isfinite(fold_auc)
    if not finite.any():
        raise ValueError("no inner fold has both classes: the regularisation cannot be chosen; add labelled exams")
    count = finite.sum(axis=1)
    mean = np.where(count > 0, np.where(finite, fold_auc, 0.0).sum(axis=1) / np.maximum(count, 1), -np.inf)
    by_c = np.lexsort((Cs, -mean))  # best mean first, the smaller C first among equals
    best = int(by_c[0])
    if rule == "best" or count[best] < 2:
        return best
    se = float(np.std(fold_auc[best][finite[best]], ddof=1) / np.sqrt(count[best]))
    eligible = np.flatnonzero(mean >= mean[best] - se)
    return int(eligible[np.argmin(Cs[eligible])])


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Standardise, then L2 logistic regression; ``C`` by inner cross-validated ROC-AUC.

    Args:
        Cs: inverse regularisation strengths to try.
        inner_folds: inner folds (patient-grouped, stratified) for choosing ``C`` and the threshold.
        class_weight: passed to LogisticRegression ("balanced": classes weigh equally).
        threshold_rule: "youden" (max sensitivity + specificity - 1) or "sensitivity".
        target_sensitivity: for ``threshold_rule="sensitivity"``.
        seed: seeds the inner folds.
        c_rule: "one-se" (the strongest regularisation within one standard error of the best inner
            AUC) or "best" (the best inner AUC); see :func:`choose_c`.

    Fitted attributes: ``C_``, ``threshold_``, ``pipeline_`` (scaler + logistic regression),
    ``inner_auc_`` (mean inner-CV AUC of the chosen C), ``best_C_`` (the C of the best mean inner
    AUC), ``classes_``.

    Example:
        >>> probe = LinearProbe().fit(X_train, y_train, groups=patients)
        >>> probe.predict_proba(X_test)[:, 1], probe.threshold_
    """

    def __init__(
        self,
        Cs: tuple[float, ...] = DEFAULT_CS,
        inner_folds: int = 5,
        class_weight: str | None = "balanced",
        threshold_rule: str = "youden",
        target_sensitivity: float | None = None,
        seed: int = 0,
        c_rule: str = "one-se",
    ):
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.class_weight = class_weight
        self.threshold_rule = threshold_rule
        self.target_sensitivity = target_sensitivity
        self.seed = seed
        self.c_rule = c_rule

    def _pipeline(self, C: float) -> Pipeline:
        model = LogisticRegression(C=C, class_weight=self.class_weight, max_iter=5000)
        return make_pipeline(StandardScaler(), model)

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> LinearProbe:
        """Fit on ``X`` ``[N, F]`` and 0/1 labels ``y``; ``groups`` (patients) keep the inner folds patient-level."""
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(int)
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        splits = inner_splits(y, groups, self.inner_folds, self.seed)
        # Problems this small are slower with several BLAS threads (4x measured on 2 busy cores).
        with threadpool_limits(limits=1):
            self._fit(X, y, splits)
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]) -> None:
        # One pass over (C, fold) gives both the C choice and, for the chosen C, out-of-fold scores
        # for the threshold; LogisticRegressionCV would need a second cross-validation for the latter.
        oof = np.zeros((len(self.Cs), len(y)))
        for train, test in splits:
            for i, C in enumerate(self.Cs):
                oof[i, test] = self._pipeline(C).fit(X[train], y[train]).predict_proba(X[test])[:, 1]
        fold_auc = np.array([[roc_auc(y[test], oof[i, test]) for _, test in splits] for i in range(len(self.Cs))])
        chosen = choose_c(self.Cs, fold_auc, self.c_rule)
        self.C_ = float(self.Cs[chosen])
        self.best_C_ = float(self.Cs[choose_c(self.Cs, fold_auc, "best")])
        self.inner_auc_ = float(np.nanmean(fold_auc[chosen]))
        self.threshold_ = choose_threshold(
            y, oof[chosen], rule=self.threshold_rule, target_sensitivity=self.target_sensitivity
        )
        self.pipeline_ = self._pipeline(self.C_).fit(X, y)
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``[N, 2]`` class probabilities."""
        return self.pipeline_.predict_proba(np.asarray(X, dtype=np.float64))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """0/1 decisions at the threshold chosen on the training data."""
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)

    def linear_parts(self) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """``(weight [F], bias, mean [F], scale [F])``: score = sigmoid(((x - mean) / scale) @ weight + bias)."""
        scaler, model = self.pipeline_[0], self.pipeline_[-1]
        return (
            model.coef_[0].astype(np.float32),
            float(model.intercept_[0]),
            scaler.mean_.astype(np.float32),
            scaler.scale_.astype(np.float32),
        )


def _logistic_objective(Z1: np.ndarray, theta: np.ndarray, Y: np.ndarray, S: np.ndarray, C: float) -> np.ndarray:
    """``C * sum(S * log-loss) + |coef|^2 / 2`` per label vector (the intercept, last, is not penalised)."""
    margin = (Z1 @ theta[..., None])[..., 0]  # [P, N]
    return C * (S * np.logaddexp(0.0, -(2 * Y - 1) * margin)).sum(1) + 0.5 * (theta[:, :-1] ** 2).sum(1)


def fit_logistic_many(
    X: np.ndarray,
    Y: np.ndarray,
    C: float,
    class_weight: str | None = "balanced",
    tol: float = 1e-10,
    max_iter: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """L2 logistic regression fitted to ``P`` label vectors at once: scikit-learn's
    ``LogisticRegression(C=C, class_weight=class_weight)`` objective, solved by batched Newton steps.

    Hand-written because a permutation test needs hundreds of refits per fold: one sklearn call per
    label vector costs 3-15 ms, a batched solve of all of them 10-40x less. The weights lie in the row
    space of ``X`` (L2 penalty), so Newton runs on the ``min(N, F)`` coordinates of a thin SVD.

    Args:
        X: features, ``[N, F]`` shared by every label vector or ``[P, N, F]`` one matrix per vector.
        Y: 0/1 labels ``[P, N]``.
        C: inverse L2 strength.
        class_weight: "balanced" (each class weighs N / (2 * its count), per label vector) or None.
        tol: stop when every vector's Newton decrement is below this.
        max_iter: most Newton steps.

    Returns:
        ``(coef [P, F], intercept [P])``; a label vector with one class gets zeros (a constant score).

    Example:
        >>> coef, intercept = fit_logistic_many(X_scaled, np.stack([y, rng.permutation(y)]), C=0.1)
        >>> scores = X_test @ coef.T + intercept  # [M, P] log-odds
    """
    Y = np.asarray(Y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    X = X[None] if X.ndim == 2 else X
    if Y.ndim != 2 or X.ndim != 3 or X.shape[1] != Y.shape[1] or X.shape[0] not in (1, Y.shape[0]):
        raise ValueError(f"fit_logistic_many: features {X.shape} do not fit labels {Y.shape}; need [N, F] or [P, N, F]")
    if class_weight not in ("balanced", None):
        raise ValueError(f"fit_logistic_many: class_weight must be 'balanced' or None, got {class_weight!r}")
    P, N = Y.shape
    coef, intercept = np.zeros((P, X.shape[2])), np.zeros(P)
    positives = Y.sum(1)
    fit = (positives > 0) & (positives < N)  # a single-class vector has no finite solution
    if not fit.any():
        return coef, intercept
    Y = Y[fit]
    X = X if X.shape[0] == 1 else X[fit]
    U, s, Vt = np.linalg.svd(X, full_matrices=False)  # [1|P, N, R], [1|P, R], [1|P, R, F]
    Z1 = np.concatenate([U * s[:, None, :], np.ones((*U.shape[:2], 1))], axis=2)  # [1|P, N, R + 1]
    n_pos = Y.sum(1, keepdims=True)
    S = np.where(Y == 1, N / (2 * n_pos), N / (2 * (N - n_pos))) if class_weight == "balanced" else np.ones_like(Y)
    penalty = np.r_[np.ones(Z1.shape[2] - 1), 0.0]
    theta = np.zeros((len(Y), Z1.shape[2]))  # [P, R + 1]
    value = _logistic_objective(Z1, theta, Y, S, C)
    for _ in range(max_iter):
        p = expit((Z1 @ theta[..., None])[..., 0])  # [P, N]
        gradient = C * (Z1.transpose(0, 2, 1) @ (S * (p - Y))[..., None])[..., 0] + penalty * theta
        hessian = (Z1.transpose(0, 2, 1) * (C * S * p * (1 - p))[:, None, :]) @ Z1 + np.diag(penalty)
        step = -np.linalg.solve(hessian, gradient[..., None])[..., 0]
        decrement = -(gradient * step).sum(1)
        if decrement.max() < tol:
            break
        t = np.ones(len(Y))  # backtracking (Armijo) per vector: a full Newton step can overshoot at large C
        for _ in range(50):
            trial = _logistic_objective(Z1, theta + t[:, None] * step, Y, S, C)
            short = trial > value - 1e-4 * t * decrement
            if not short.any():
                break
            t = np.where(short, t / 2, t)
        theta = theta + t[:, None] * step
        value = _logistic_objective(Z1, theta, Y, S, C)
    coef[fit] = (theta[:, None, :-1] @ Vt)[:, 0]
    intercept[fit] = theta[:, -1]
    return coef, intercept


def fixed_c_scorer(X_train: np.ndarray, X_test: np.ndarray, C: float, class_weight: str | None = "balanced") -> Scorer:
    """Permuted training labels ``[P, N]`` -> test log-odds ``[P, M]`` of the probe's pipeline (standardise,
    then logistic regression) at a fixed ``C``: no inner search, no threshold. The scaler needs no
    labels, so it is fitted once."""
    X_train, X_test = np.asarray(X_train, dtype=np.float64), np.asarray(X_test, dtype=np.float64)
    scaler = StandardScaler().fit(X_train)
    A, B = scaler.transform(X_train), scaler.transform(X_test)

    def score(Y: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=1):
            coef, intercept = fit_logistic_many(A, Y, C, class_weight)
        return coef @ B.T + intercept[:, None]

    return score


def sample_features(embeddings: Embeddings, table: pd.DataFrame, task: str) -> np.ndarray:
    """Features of a task's samples: the exam embedding, or for paired tasks (outcome)
    concat(baseline, follow-up, follow-up - baseline)."""
    followup = embeddings.lookup(list(table["exam_id"]))
    if task not in PAIRED_TASKS:
        return followup
    return pair_array(embeddings.lookup(list(table["baseline_exam_id"])), followup)


def fold_key(task: str, train: pd.DataFrame) -> tuple[str, tuple[str, ...]]:
    """Identifies a task's training set (its sample ids), to remember what a fit chose on it."""
    return task, tuple(train["sample_id"])


@dataclass
class ProbeMethod:
    """Linear probe on frozen embeddings, one :class:`LinearProbe` per task (an ``evaluate`` method).

    ``chosen_c`` remembers the C of every fit (by :func:`fold_key`) for :meth:`permutation_scorer`.
    """

    embeddings: Embeddings
    name: str = "umbif-probe"
    description: str = "UMBIF encoder, frozen; linear probe (logistic regression, inner-CV regularisation)"
    inner_folds: int = 5
    seed: int = 0
    chosen_c: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict, repr=False)

    def _probe(self, table: pd.DataFrame, task: str) -> LinearProbe:
        probe = LinearProbe(inner_folds=self.inner_folds, seed=self.seed)
        probe.fit(sample_features(self.embeddings, table, task), table["y"].to_numpy(), table["patient_id"])
        self.chosen_c[fold_key(task, table)] = probe.C_
        return probe

    def fit_predict(
        self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]
    ) -> dict[str, tuple[np.ndarray, float]]:
        out = {}
        for task, table in train.items():
            probe = self._probe(table, task)
            scores = probe.predict_proba(sample_features(self.embeddings, test[task], task))[:, 1]
            out[task] = (scores, probe.threshold_)
        return out

    def permutation_scorer(self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]) -> dict[str, Scorer]:
        """Per task, permuted training labels ``[P, N]`` -> test scores ``[P, M]``: the probe refitted at the C
        its real fit chose on this fold (refitted once on the true labels when this session has not seen
        the fold), without the inner search or the threshold (``umbif.eval.permutation``)."""
        out = {}
        for task, table in train.items():
            C = self.chosen_c.get(fold_key(task, table))
            C = self._probe(table, task).C_ if C is None else C
            features = (sample_features(self.embeddings, frame, task) for frame in (table, test[task]))
            out[task] = fixed_c_scorer(*features, C)
        return out


def fit_classifier(
    table: pd.DataFrame,
    cache: Cache | str | Path,
    encoder_dir: str | Path,
    out_dir: str | Path,
    tasks: Sequence[str] = TASKS,
    seed: int = 0,
    min_per_class: int = 4,
    inner_folds: int = 5,
    batch_size: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Fit one probe per task on every labelled, cached exam; write a classifier folder for ``umbif predict``.

    Returns a summary: per task ``n_train``, ``C``, ``inner_auc``, ``threshold``; ``notes`` on what
    was left out. The embeddings are stored in ``out_dir/embeddings/`` (reused on a rerun).
    """
    from umbif.models.io import load_encoder
    from umbif.provenance import provenance

    cache, out_dir = cache if isinstance(cache, Cache) else Cache(cache), Path(out_dir)
    cohort = build_cohort(table, cache.exam_ids, tasks, min_per_class)
    embeddings = embed_exams(encoder_dir, cache, cohort.exam_ids(), out_dir, batch_size, on_progress=on_progress)
    heads, summary = {}, {}
    for task, frame in cohort.samples.items():
        probe = LinearProbe(inner_folds=inner_folds, seed=seed)
        probe.fit(sample_features(embeddings, frame, task), frame["y"].to_numpy(), frame["patient_id"].to_numpy())
        weight, bias, mean, scale = probe.linear_parts()
        positive, negative = LABELS[task]
        heads[task] = SavedTaskHead(
            SavedLinearHead(weight, bias, mean, scale),
            inputs="pair" if task in PAIRED_TASKS else "exam",
            threshold=probe.threshold_,
            positive=positive,
            negative=negative,
            n_train=len(frame),
            threshold_rule="youden on patient-grouped inner cross-validated predictions",
        )
        summary[task] = {
            "n_train": len(frame),
            "C": probe.C_,
            "inner_auc": probe.inner_auc_,
            "threshold": probe.threshold_,
        }
    encoder = load_encoder(encoder_dir, image_size=cache.grid)
    settings = {
        "tasks": list(cohort.samples),
        "seed": seed,
        "inner_folds": inner_folds,
        "encoder": Path(encoder_dir).name,
    }
    save_classifier(
        out_dir, encoder, encoder.config, heads, cache.preprocess, cache.grid, "probe", provenance(settings, seed=seed)
    )
    return {"tasks": summary, "notes": cohort.notes}
