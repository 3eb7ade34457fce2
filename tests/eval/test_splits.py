"""Patient-level stratified splits: every patient tested once per repeat, strata balanced, saved and reloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from umbif.data.samples import SAMPLE_COLUMNS
from umbif.eval.splits import (
    FORMAT,
    POOLED,
    fold_indices,
    load_splits,
    make_splits,
    patient_strata,
    save_splits,
)


def _samples(n_patients: int = 40, sites: tuple[str, ...] = ("A", "B", "C"), seed: int = 0) -> dict[str, pd.DataFrame]:
    """idh: one sample per patient; outcome: 0-2 follow-up samples per patient (several per patient)."""
    rng = np.random.default_rng(seed)
    patients = [f"p{i:03d}" for i in range(n_patients)]
    site_of = {p: sites[i % len(sites)] for i, p in enumerate(patients)}
    idh = pd.DataFrame(
        {
            "sample_id": [f"{p}-e0" for p in patients],
            "patient_id": patients,
            "site": [site_of[p] for p in patients],
            "exam_id": [f"{p}-e0" for p in patients],
            "baseline_exam_id": "",
            "y": rng.integers(0, 2, n_patients),
        }
    )
    rows = [
        {
            "sample_id": f"{p}-e{k}",
            "patient_id": p,
            "site": site_of[p],
            "exam_id": f"{p}-e{k}",
            "baseline_exam_id": f"{p}-e0",
            "y": int(rng.integers(0, 2)),
        }
        for p in patients
        for k in range(1, 1 + int(rng.integers(0, 3)))
    ]
    outcome = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    return {"idh": idh, "outcome": outcome}


def test_patient_strata_one_row_per_patient_with_labels_of_all_tasks() -> None:
    samples = _samples(12)
    strata = patient_strata(samples, folds=1)  # folds=1: nothing is merged
    assert list(strata.columns) == ["patient_id", "site", "stratum"]
    assert strata["patient_id"].tolist() == sorted(samples["idh"]["patient_id"])
    outcome = samples["outcome"]
    for _, row in strata.iterrows():
        idh = samples["idh"].set_index("patient_id").loc[row["patient_id"], "y"]
        mine = outcome[outcome["patient_id"] == row["patient_id"]]["y"]
        expected_outcome = "-" if mine.empty else str(int(mine.max()))
        assert row["stratum"] == f"idh={idh}|outcome={expected_outcome}"


@pytest.mark.parametrize("folds", [3, 5])
def test_rare_strata_are_merged_until_each_fills_the_folds(folds: int) -> None:
    strata = patient_strata(_samples(30, seed=1), folds=folds)
    counts = strata["stratum"].value_counts()
    assert (counts >= folds).all()
    assert counts.sum() == 30 and len(counts) >= 2  # merged, not collapsed to one stratum


def test_merging_drops_the_last_task_first_then_pools() -> None:
    patients = [f"p{i}" for i in range(9)]
    idh = pd.DataFrame(
        {
            "sample_id": patients,
            "patient_id": patients,
            "site": "A",
            "exam_id": patients,
            "baseline_exam_id": "",
            "y": [1, 1, 1, 1, 1, 1, 0, 0, 0],
        }
    )
    mgmt = idh.assign(y=[0, 0, 0, 1, 1, 1, 0, 0, 1])
    strata = patient_strata({"idh": idh, "mgmt": mgmt}, folds=3).set_index("patient_id")["stratum"]
    assert strata["p0"] == "idh=1|mgmt=0" and strata["p3"] == "idh=1|mgmt=1"  # 3 each: kept
    assert strata["p6"] == strata["p8"] == "idh=0"  # 2 + 1 too rare: the mgmt label is dropped


def test_a_pool_smaller_than_the_folds_joins_the_largest_stratum() -> None:
    patients = [f"p{i}" for i in range(7)]
    idh = pd.DataFrame(
        {
            "sample_id": patients,
            "patient_id": patients,
            "site": "A",
            "exam_id": patients,
            "baseline_exam_id": "",
            "y": [1, 1, 1, 1, 1, 0, 0],
        }
    )
    strata = patient_strata({"idh": idh}, folds=3)["stratum"]
    assert set(strata) == {"idh=1"} and POOLED not in set(strata)


@pytest.mark.parametrize(("folds", "repeats"), [(2, 1), (5, 3)])
def test_every_patient_is_tested_once_per_repeat_and_strata_are_balanced(folds: int, repeats: int) -> None:
    patients = patient_strata(_samples(60, seed=2), folds=folds)
    splits = make_splits(patients, folds=folds, repeats=repeats, seed=7)
    assert splits["format"] == FORMAT and splits["version"] == 1
    assert splits["patients"] == sorted(patients["patient_id"])
    stratum = patients.set_index("patient_id")["stratum"]
    overall = stratum.value_counts(normalize=True)
    for repeat in range(repeats):
        folds_of_repeat = [f for f in splits["kfold"] if f["repeat"] == repeat]
        assert [f["fold"] for f in folds_of_repeat] == list(range(folds))
        tested = [p for f in folds_of_repeat for p in f["test_patients"]]
        assert sorted(tested) == splits["patients"]
        for fold in folds_of_repeat:
            share = stratum[fold["test_patients"]].value_counts()
            expected = overall * len(fold["test_patients"])
            assert (abs(share.reindex(expected.index, fill_value=0) - expected) <= 1.0 + 1e-9).all()
    if repeats > 1:
        first = [f["test_patients"] for f in splits["kfold"] if f["repeat"] == 0]
        second = [f["test_patients"] for f in splits["kfold"] if f["repeat"] == 1]
        assert first != second  # each repeat reshuffles


def test_splits_are_reproducible_with_a_seed() -> None:
    patients = patient_strata(_samples(30))
    assert make_splits(patients, seed=3) == make_splits(patients, seed=3)
    assert make_splits(patients, seed=3)["kfold"] != make_splits(patients, seed=4)["kfold"]


def test_loso_has_one_fold_per_site() -> None:
    samples = _samples(30, sites=("B", "A", "C"))
    patients = patient_strata(samples)
    splits = make_splits(patients)
    assert [f["site"] for f in splits["loso"]] == ["A", "B", "C"] and splits["loso_skipped"] is None
    for fold in splits["loso"]:
        assert set(fold["test_patients"]) == set(patients.loc[patients["site"] == fold["site"], "patient_id"])


@pytest.mark.parametrize(("sites", "loso", "reason"), [(("A",), True, "at least 2 sites"), (("A", "B"), False, "not")])
def test_loso_left_out_with_a_reason(sites: tuple[str, ...], loso: bool, reason: str) -> None:
    splits = make_splits(patient_strata(_samples(20, sites=sites)), loso=loso)
    assert splits["loso"] == [] and reason in splits["loso_skipped"]
    with pytest.raises(ValueError, match="no leave-one-site-out folds"):
        list(fold_indices(splits, _samples(20, sites=sites)["idh"], "loso"))


def test_fewer_patients_than_folds_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"3 patient.* cannot fill 5 folds"):
        make_splits(patient_strata(_samples(3), folds=5), folds=5)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    splits = make_splits(patient_strata(_samples(25)), repeats=2)
    path = save_splits(splits, tmp_path / "run" / "splits.json")
    assert load_splits(path) == splits
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: d.update(format="umbif-metrics"), "not a splits file"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.pop("kfold"), "lack"),
        (lambda d: d["kfold"][0]["test_patients"].pop(), "exactly one test fold"),
        (lambda d: d["loso"][0]["test_patients"].append("stranger"), "unknown patients"),
        (lambda d: d["kfold"][0].pop("test_patients"), "malformed splits"),
    ],
)
def test_load_splits_names_the_file_and_the_problem(tmp_path: Path, damage, match: str) -> None:
    splits = make_splits(patient_strata(_samples(25)))
    damage(splits)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits))
    with pytest.raises(ValueError, match=match) as error:
        load_splits(path)
    assert str(path) in str(error.value) and "umbif evaluate" in str(error.value)


def test_load_splits_rejects_non_json(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_splits(path)


@pytest.mark.parametrize("scheme", ["kfold", "loso"])
def test_fold_indices_map_patient_folds_to_sample_rows(scheme: str) -> None:
    samples = _samples(30)
    splits = make_splits(patient_strata(samples), folds=3, repeats=2)
    outcome = samples["outcome"]
    seen: dict[int, list[int]] = {}
    for repeat, fold, train, test in fold_indices(splits, outcome, scheme):
        entry = next(f for f in splits[scheme] if f["repeat"] == repeat and f["fold"] == fold)
        assert set(outcome["patient_id"].iloc[test]) <= set(entry["test_patients"])
        assert not set(outcome["patient_id"].iloc[train]) & set(entry["test_patients"])  # no patient on both sides
        assert sorted([*train, *test]) == list(range(len(outcome)))
        seen.setdefault(repeat, []).extend(test.tolist())
    for tested in seen.values():
        assert sorted(tested) == list(range(len(outcome)))  # each sample tested once per repeat


def test_folds_without_test_samples_of_the_task_are_skipped() -> None:
    samples = _samples(30)
    splits = make_splits(patient_strata(samples))
    only_site_a = samples["idh"][samples["idh"]["site"] != "B"].reset_index(drop=True)
    sites = [splits["loso"][fold]["site"] for _, fold, _, _ in fold_indices(splits, only_site_a, "loso")]
    assert sites == ["A", "C"]


def test_unknown_patient_asks_for_new_splits() -> None:
    samples = _samples(20)
    splits = make_splits(patient_strata(samples))
    extra = pd.concat([samples["idh"], samples["idh"].iloc[:1].assign(patient_id="newcomer")], ignore_index=True)
    with pytest.raises(ValueError, match=r"newcomer .*make new splits \(run `umbif evaluate` without --splits\)"):
        list(fold_indices(splits, extra, "kfold"))


def test_patient_strata_rejects_tables_without_sample_columns() -> None:
    with pytest.raises(ValueError, match=r"task 'idh' lacks column\(s\) \['site'\]"):
        patient_strata({"idh": pd.DataFrame(columns=["sample_id", "patient_id", "exam_id", "baseline_exam_id", "y"])})
