"""Labelled samples: the four glioma tasks, the samples each is trained and tested on, the cohort
of a manifest and a cache, and the *items* a network is trained on. Every method and the evaluation
harness take their samples from here.

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

A :class:`Cohort` holds the sample tables of every task with enough labelled, cached patients
(:func:`build_cohort`). :func:`build_items` merges the sample tables of several tasks into
:class:`Items`, one per exam or (baseline, follow-up) pair with one label per task, for networks
that learn all tasks at once (fine-tuning, the CNN baselines).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
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


# ----------------------------------------------------------------------------- cohort


@dataclass
class Cohort:
    """The labelled samples of every evaluable task, and why others were left out."""

    samples: dict[str, pd.DataFrame]  # task -> SAMPLE_COLUMNS table
    notes: list[str] = field(default_factory=list)

    def exam_ids(self) -> list[str]:
        """Every exam the samples of all tasks need (follow-ups and baselines), sorted."""
        return sorted({e for f in self.samples.values() for e in (*f["exam_id"], *f["baseline_exam_id"]) if e})


def build_cohort(table: pd.DataFrame, cached: Iterable[str], tasks: Iterable[str], min_per_class: int) -> Cohort:
    """Per-task sample tables of the cached exams; tasks with too few labels are dropped with a note.

    Args:
        table: the manifest table.
        cached: the exams that can be used (e.g. ``Cache.exam_ids``).
        tasks: the tasks wanted.
        min_per_class: patients needed in each class for a task to be kept.

    Raises:
        ValueError: no task has enough labelled, cached patients.
    """
    cached = set(cached)
    samples, notes = {}, []
    for task in tasks:
        found = labelled_samples(table, task, exam_ids=cached)
        frame = found.table
        if task in PAIRED_TASKS:  # the baseline exam must be cached too
            frame = frame[frame["baseline_exam_id"].isin(cached)]
        notes += [f"{task}: {reason}" for reason in found.skipped]
        per_class = [frame.loc[frame["y"] == c, "patient_id"].nunique() for c in (1, 0)]
        if min(per_class) < min_per_class:
            notes.append(
                f"{task}: left out, {per_class[0]} positive and {per_class[1]} negative patients "
                f"(at least {min_per_class} of each are needed)"
            )
            continue
        samples[task] = frame.reset_index(drop=True)
    if not samples:
        raise ValueError("no task has enough labelled, cached exams to evaluate; " + "; ".join(notes[-4:]))
    return Cohort(samples, notes)


# ----------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Items:
    """Training or test examples: one per distinct ``(exam_id, baseline_exam_id)``.

    ``labels`` is ``[N, T]`` float32 in ``tasks`` order, NaN where an item has no label for a task;
    ``rows[task]`` maps each row of the task's sample table to its item index.
    """

    exam_ids: list[str]
    baseline_ids: list[str]  # "" for single-exam items
    patient_ids: list[str]
    labels: np.ndarray  # [N, T]
    tasks: tuple[str, ...]
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.exam_ids)

    def subset(self, index: np.ndarray) -> Items:
        """The items at ``index`` (``rows`` is dropped: it refers to the full set)."""
        pick = [int(i) for i in index]
        return Items(
            [self.exam_ids[i] for i in pick],
            [self.baseline_ids[i] for i in pick],
            [self.patient_ids[i] for i in pick],
            self.labels[pick],
            self.tasks,
        )

    def exams_needed(self) -> list[str]:
        """Every exam the items read (follow-ups and baselines), sorted."""
        return sorted(set(self.exam_ids) | {b for b in self.baseline_ids if b})


def build_items(tables: Mapping[str, pd.DataFrame], tasks: Sequence[str], with_labels: bool = True) -> Items:
    """Merge per-task sample tables (:data:`SAMPLE_COLUMNS`) into items.

    Items. A sample of ``idh``/``mgmt``/``codeletion_1p19q`` is an exam; a sample of ``outcome`` is a
    (baseline, follow-up) pair. Samples of all tasks are merged into items keyed by
    ``(exam_id, baseline_exam_id)`` with one label per task, NaN where the item has none (1p/19q exists
    only for IDH-mutant tumours; a pair has no genotype label).

    Args:
        tables: task -> sample table.
        tasks: the model's tasks, in head order (every key of ``tables`` must be one).
        with_labels: False for test tables: their labels are never read.

    Returns:
        :class:`Items`.

    Raises:
        ValueError: a column is missing, an outcome row has no baseline, or one exam has two labels for a task.

    Example:
        >>> items = build_items({"idh": idh_table, "mgmt": mgmt_table}, ("idh", "mgmt"))
    """
    keys: dict[tuple[str, str], int] = {}
    exams: list[str] = []
    baselines: list[str] = []
    patients: list[str] = []
    labels: list[list[float]] = []
    rows: dict[str, np.ndarray] = {}
    for task, table in tables.items():
        if task not in tasks:
            raise ValueError(f"task {task!r} is not one of the model's tasks {list(tasks)}")
        missing = [c for c in SAMPLE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"the {task} sample table lacks columns {missing}; build it with umbif.data.samples")
        t = tasks.index(task)
        index = []
        for exam, baseline, patient, y in zip(
            table["exam_id"], table["baseline_exam_id"], table["patient_id"], table["y"], strict=True
        ):
            baseline = str(baseline) if task in PAIRED_TASKS else ""
            if task in PAIRED_TASKS and baseline in ("", "nan"):
                raise ValueError(f"{task} sample {exam!r} has no baseline_exam_id; outcome needs a pair")
            key = (str(exam), baseline)
            if key not in keys:
                keys[key] = len(exams)
                exams.append(key[0])
                baselines.append(baseline)
                patients.append(str(patient))
                labels.append([math.nan] * len(tasks))
            i = keys[key]
            value = float(y) if with_labels else math.nan
            if with_labels and value not in (0.0, 1.0):
                raise ValueError(f"{task} sample {exam!r}: y must be 0 or 1, got {y!r}")
            if not math.isnan(labels[i][t]) and labels[i][t] != value:
                raise ValueError(f"{task} sample {exam!r} appears twice with different labels")
            labels[i][t] = value
            index.append(i)
        rows[task] = np.asarray(index, dtype=np.int64)
    label_array = np.asarray(labels, dtype=np.float32).reshape(len(exams), len(tasks))
    return Items(exams, baselines, patients, label_array, tuple(tasks), rows)
