"""Label-permutation test of a cross-validated method (Ojala & Garriga 2010, test 1).

Under the null hypothesis the labels carry no information the features can use, so any patient's labels
could have belonged to any other patient. The test shuffles the labels *between patients* (all the
samples of a patient keep their labels together and move to a patient with as many samples), runs the
same cross-validation on the same folds with the shuffled labels, and scores the pooled out-of-fold
predictions against the shuffled labels. With ``B`` shuffles, the p-value is
``(1 + #{null AUC >= observed AUC}) / (1 + B)``; it is never 0 and assumes no distribution.

Only methods that can refit cheaply with fixed settings take part: a method offers
``permutation_scorer(train, test) -> {task: scorer}``, where ``scorer(labels [B, N_train]) -> scores
[B, N_test]`` refits it with the settings its real fit chose on that fold (for the linear probe: the
same C, no inner search, no threshold). The observed AUC is the method's own (pooled out-of-fold AUC of
its real predictions, with its inner search). Keeping the settings chosen on the true labels instead of
searching again on every shuffle is an approximation that makes the test tens of times cheaper (the
inner search is 35 fits per fold for the probe); only the hyper-parameters are held, the rest is refitted. The
test runs on k-fold repeat 0 only: one cross-validation per shuffle, on the folds every method sees.
Shuffles are drawn from ``(seed, task)``, so every method of a run is tested against the same
shuffled labels.

Example::

    null = null_distribution(method, samples, folds, n_permutations=200, seed=0)
    p = permutation_p_value(observed_auc, null["idh"])
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from umbif.metrics import roc_auc

NO_SCORER = "it has no cheap refit with fixed settings (a permutation test would repeat its whole training per shuffle)"
SCHEME, REPEAT = "kfold", 0  # the folds the test runs on
TIE = 1e-9  # AUCs closer than this are equal (float rounding; an AUC step is 1 / (positives * negatives))


def permutation_rng(seed: int, task: str) -> np.random.Generator:
    """The generator of a task's shuffles: from the run's seed and the task's name (not the method's)."""
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def patient_permutations(patient_ids: Sequence[str], n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``n_permutations`` shuffles of labels between patients, as row positions ``[B, N]``: shuffled labels
    are ``y[order]``.

    Patients are shuffled among those with as many samples; a patient's samples (in table order)
    take the labels of another patient's samples (in table order). With one sample per patient this
    is a plain permutation of the samples.

    Example:
        >>> order = patient_permutations(table["patient_id"], 200, np.random.default_rng(0))
        >>> shuffled = table["y"].to_numpy()[order]  # [200, N]
    """
    codes, _ = pd.factorize(pd.Series(patient_ids, dtype=str))
    counts = np.bincount(codes)
    by_patient = np.argsort(codes, kind="stable")  # sample positions grouped by patient, table order inside
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    order = np.empty((n_permutations, len(codes)), dtype=np.int64)
    for size in np.unique(counts):
        patients = np.flatnonzero(counts == size)
        positions = by_patient[starts[patients][:, None] + np.arange(size)]  # [patients, size]
        draws = rng.permuted(np.broadcast_to(np.arange(len(patients)), (n_permutations, len(patients))), axis=1)
        order[:, positions.ravel()] = positions[draws].reshape(n_permutations, -1)
    return order


def permutation_p_value(observed: float | None, null: Sequence[float]) -> float | None:
    """``(1 + #{null >= observed}) / (1 + len(null))``; None when the observed value is undefined or there is
    no null. AUCs are fractions, so equal values are common: a null value equal to the observed one up to
    float rounding (:data:`TIE`) counts against it."""
    null = np.asarray(null, dtype=np.float64)
    if observed is None or not np.isfinite(observed) or null.size == 0:
        return None
    return float((1 + np.count_nonzero(null >= observed - TIE)) / (1 + null.size))


def null_distribution(
    method: Any,
    samples: dict[str, pd.DataFrame],
    folds: Sequence[dict[str, tuple[np.ndarray, np.ndarray]]],
    n_permutations: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Null AUCs ``[B]`` per task: the pooled out-of-fold AUC of ``method`` refitted on shuffled labels.

    Args:
        method: has ``permutation_scorer(train, test)`` (see the module docstring).
        samples: the samples the method was cross-validated on, per task.
        folds: per fold of one repeat, ``{task: (train rows, test rows)}`` (``evaluate.fold_plan``).
        n_permutations: shuffles ``B``.
        seed: with the task, seeds the shuffles.
    """
    labels = {}
    for task, table in samples.items():
        order = patient_permutations(table["patient_id"].to_numpy(), n_permutations, permutation_rng(seed, task))
        labels[task] = table["y"].to_numpy()[order]  # [B, N]
    scores = {task: np.full((n_permutations, len(table)), np.nan) for task, table in samples.items()}
    for parts in folds:
        train = {t: samples[t].iloc[tr].reset_index(drop=True) for t, (tr, _) in parts.items()}
        test = {t: samples[t].iloc[te].reset_index(drop=True) for t, (_, te) in parts.items()}
        scorers = method.permutation_scorer(train, test)
        for task, (tr, te) in parts.items():
            scores[task][:, te] = scorers[task](labels[task][:, tr])
    out = {}
    for task, matrix in scores.items():
        tested = np.isfinite(matrix).all(0)  # samples with a test fold in this repeat
        out[task] = np.array([roc_auc(y[tested], s[tested]) for y, s in zip(labels[task], matrix, strict=True)])
    return out
