"""Labelled samples per task: one per patient for genotype, (baseline, follow-up) pairs for outcome."""

from __future__ import annotations

import pandas as pd
import pytest

from umbif.data.manifest import Manifest
from umbif.data.samples import SAMPLE_COLUMNS, TASKS, check_task, labelled_samples


def _table(rows: list[dict]) -> pd.DataFrame:
    return Manifest(pd.DataFrame(rows).rename(columns={"tp": "timepoint"}), ".").table


ROWS = [
    # patient A: baseline unlabelled for idh, follow-up 1 and 2 labelled; outcome on both follow-ups
    {"exam_id": "A-0", "patient_id": "A", "site": "s1", "tp": "0", "mgmt": "methylated"},
    {"exam_id": "A-2", "patient_id": "A", "site": "s1", "tp": "2", "idh": "wildtype", "outcome": "progression"},
    {"exam_id": "A-1", "patient_id": "A", "site": "s1", "tp": "1", "idh": "mutant", "outcome": "treatment_effect"},
    # patient B: one exam only: its outcome label has no baseline
    {"exam_id": "B-0", "patient_id": "B", "site": "s2", "tp": "0", "idh": "Mutant", "outcome": "progression"},
    # patient C: an unknown label value
    {"exam_id": "C-0", "patient_id": "C", "site": "s2", "tp": "0", "idh": "maybe", "codeletion_1p19q": "codeleted"},
]  # fmt: skip


def test_genotype_one_sample_per_patient_earliest_labelled_exam() -> None:
    samples = labelled_samples(_table(ROWS), "idh")
    table = samples.table
    assert list(table.columns) == list(SAMPLE_COLUMNS)
    assert dict(zip(table["patient_id"], table["exam_id"], strict=True)) == {"A": "A-1", "B": "B-0"}
    assert dict(zip(table["patient_id"], table["y"], strict=True)) == {"A": 1, "B": 1}  # "Mutant": case-insensitive
    assert (table["baseline_exam_id"] == "").all()
    assert any("C-0" in s and "'maybe'" in s for s in samples.skipped)


def test_outcome_pairs_each_follow_up_with_the_earliest_exam() -> None:
    samples = labelled_samples(_table(ROWS), "outcome")
    pairs = dict(zip(samples.table["exam_id"], samples.table["baseline_exam_id"], strict=True))
    assert pairs == {"A-1": "A-0", "A-2": "A-0"}
    assert dict(zip(samples.table["exam_id"], samples.table["y"], strict=True)) == {"A-1": 0, "A-2": 1}
    assert any(s.startswith("B-0") and "baseline" in s for s in samples.skipped)


def test_exams_outside_the_cache_are_left_out_with_a_reason() -> None:
    samples = labelled_samples(_table(ROWS), "outcome", exam_ids={"A-1", "A-2", "B-0"})
    # A's baseline is not cached: A-2 pairs with the earliest cached exam before it, A-1 has none
    assert dict(zip(samples.table["exam_id"], samples.table["baseline_exam_id"], strict=True)) == {"A-2": "A-1"}
    assert any(s.startswith("A-1") and "baseline" in s for s in samples.skipped)
    genotype = labelled_samples(_table(ROWS), "mgmt", exam_ids={"A-1"})
    assert genotype.table.empty and genotype.skipped == ["A-0: not in the cache"]


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown task 'grade'"):
        check_task("grade")
    assert set(TASKS) == {"outcome", "idh", "mgmt", "codeletion_1p19q"}
