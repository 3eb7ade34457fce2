"""The four glioma tasks and the labelled samples each is trained and tested on.

A *sample* is what one prediction is made for:

- ``idh``, ``mgmt``, ``codeletion_1p19q``: one sample per patient, the patient's earliest exam
  that carries the label (genotype is a property of the tumour at diagnosis; one sample per
  patient keeps every patient's weight equal). 1p/19q is only recorded for IDH-mutant tumours,
  so its samples are those patients.
- ``outcome`` (progression vs. treatment effect after therapy): one sample per labelled
  follow-up exam, paired with the same patient's baseline: the earliest usable (e.g. cached) exam
  before it. A follow-up without an earlier exam cannot be paired and is left out, with a reason.

Every table made here has the columns of :data:`SAMPLE_COLUMNS`; ``y`` is 1 for the task's
positive class (``umbif.data.manifest.LABELS``), 0 for the negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from umbif.data.manifest import LABELS

TASKS: tuple[str, ...] = ("outcome", "idh", "mgmt", "codeletion_1p19q")
PAIRED_TASKS: frozenset[str] = frozenset({"outcome"})  # predicted from a (baseline, follow-up) pair
TITLES: dict[str, str] = {
    "outcome": "Post-treatment outcome (progression vs. treatment effect)",
    "idh": "IDH mutation",
    "mgmt": "MGMT promoter methylation",
    "codeletion_1p19q": "1p/19q codeletion",
}
SAMPLE_COLUMNS: tuple[str, ...] = ("sample_id", "patient_id", "site", "exam_id", "baseline_exam_id", "y")
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


@dataclass
class Samples:
    """The labelled samples of one task, and the exams that could not be used (with why)."""

    task: str
    table: pd.DataFrame  # SAMPLE_COLUMNS
    skipped: list[str] = field(default_factory=list)  # human-readable reasons, one per left-out exam


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return task


def _timepoints(table: pd.DataFrame) -> np.ndarray:
    """Timepoints as floats (empty -> 0: an exam without a timepoint is taken as the baseline)."""
    values = pd.to_numeric(table["timepoint"].replace("", "0"), errors="coerce")
    return values.fillna(0.0).to_numpy(dtype=np.float64)


def labelled_samples(table: pd.DataFrame, task: str, exam_ids: set[str] | None = None) -> Samples:
    """The labelled samples of ``task`` in a manifest table.

    Args:
        table: the manifest table (``Manifest.table``; all cells text, "" for missing).
        task: one of :data:`TASKS`.
        exam_ids: if given, only these exams can be used (e.g. the ones in the cache); the others
            are reported in ``skipped``.

    Returns:
        :class:`Samples` whose table is sorted by ``sample_id``.
    """
    check_task(task)
    positive, negative = LABELS[task]
    frame = table.assign(_t=_timepoints(table)).sort_values(["patient_id", "_t", "exam_id"], kind="stable")
    skipped: list[str] = []
    if exam_ids is not None:
        cached = frame["exam_id"].isin(exam_ids)
        skipped += [f"{e}: not in the cache" for e in frame.loc[~cached & (frame[task] != ""), "exam_id"]]
        frame = frame[cached]
    values = frame[task].str.strip().str.lower()
    unknown = frame[(values != "") & ~values.isin([positive, negative])]
    skipped += [f"{r.exam_id}: {task} value {r[task]!r} is not {positive} or {negative}" for _, r in unknown.iterrows()]
    keep = values.isin([positive, negative])
    labelled = frame[keep].assign(y=(values[keep] == positive).astype(int).to_numpy())
    if task in PAIRED_TASKS:
        rows = []
        for _, row in labelled.iterrows():
            earlier = frame[(frame["patient_id"] == row["patient_id"]) & (frame["_t"] < row["_t"])]
            if earlier.empty:
                skipped.append(f"{row['exam_id']}: {task} needs an earlier exam of the same patient (baseline)")
                continue
            rows.append({**row, "baseline_exam_id": earlier.iloc[0]["exam_id"]})
        labelled = pd.DataFrame(rows, columns=[*labelled.columns, "baseline_exam_id"])
    else:
        labelled = labelled.drop_duplicates("patient_id", keep="first").assign(baseline_exam_id="")
    out = labelled.assign(sample_id=labelled["exam_id"])[list(SAMPLE_COLUMNS)]
    out = out.sort_values("sample_id").reset_index(drop=True)
    out["y"] = out["y"].astype(int)
    return Samples(task, out, skipped)
