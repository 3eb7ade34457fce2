"""Linear probing: logistic regression on frozen exam embeddings, regularisation chosen by inner CV.

A scikit-learn estimator (``fit`` returns self, fitted attributes end in ``_``), so it composes with
sklearn's tools. The decision threshold is chosen on the *training* data only, from inner
cross-validated predictions (a threshold read off the model's own fit would be optimistic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Standardise, then L2 logistic regression; ``C`` by inner cross-validated ROC-AUC.

    Args:
        Cs: inverse regularisation strengths to try.
        inner_folds: inner folds (patient-grouped, stratified) for choosing ``C`` and the threshold.
        class_weight: passed to LogisticRegression ("balanced": classes weigh equally).
        threshold_rule: "youden" (max sensitivity + specificity - 1) or "sensitivity".
        target_sensitivity: for ``threshold_rule="sensitivity"``.
        seed: seeds the inner folds.

    Fitted attributes: ``C_``, ``threshold_``, ``pipeline_`` (scaler + logistic regression),
    ``inner_auc_`` (mean inner-CV AUC of the chosen C), ``classes_``.

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
    ):
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.class_weight = class_weight
        self.threshold_rule = threshold_rule
        self.target_sensitivity = target_sensitivity
        self.seed = seed

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
        mean_auc = np.nanmean(fold_auc, axis=1)
        best = int(np.nanargmax(mean_auc))  # ties: the strongest regularisation (Cs ascending)
        self.C_ = float(self.Cs[best])
        self.inner_auc_ = float(mean_auc[best])
        self.threshold_ = choose_threshold(
            y, oof[best], rule=self.threshold_rule, target_sensitivity=self.target_sensitivity
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


def sample_features(embeddings: Embeddings, table: pd.DataFrame, task: str) -> np.ndarray:
    """Features of a task's samples: the exam embedding, or for paired tasks (outcome)
    concat(baseline, follow-up, follow-up - baseline)."""
    followup = embeddings.lookup(list(table["exam_id"]))
    if task not in PAIRED_TASKS:
        return followup
    return pair_array(embeddings.lookup(list(table["baseline_exam_id"])), followup)


@dataclass
class ProbeMethod:
    """Linear probe on frozen embeddings, one :class:`LinearProbe` per task (an ``evaluate`` method)."""

    embeddings: Embeddings
    name: str = "umbif-probe"
    description: str = "UMBIF encoder, frozen; linear probe (logistic regression, inner-CV regularisation)"
    inner_folds: int = 5
    seed: int = 0

    def fit_predict(
        self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]
    ) -> dict[str, tuple[np.ndarray, float]]:
        out = {}
        for task, table in train.items():
            probe = LinearProbe(inner_folds=self.inner_folds, seed=self.seed)
            probe.fit(sample_features(self.embeddings, table, task), table["y"].to_numpy(), table["patient_id"])
            scores = probe.predict_proba(sample_features(self.embeddings, test[task], task))[:, 1]
            out[task] = (scores, probe.threshold_)
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
