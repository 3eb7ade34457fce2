"""Prediction CSVs cannot carry spreadsheet formulas (issue 14, class 6): a text cell starting with ``=``, ``+``,
``-``, ``@``, tab or CR is written with a leading ``'``; scores stay numbers; and everything that reads the CSVs back
(resuming folds, the metrics) takes the guard off again, so ids match the cohort's exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelled_cohort import build
from umbif.eval.evaluate import EvaluateConfig, MethodSpec, all_predictions, run_evaluation, run_method
from umbif.eval.splits import make_splits
from umbif.eval.summary import PREDICTION_COLUMNS
from umbif.utils import FORMULA_START

# ids a hostile (or merely unlucky) manifest can hold: formulas, numbers-as-text, words pandas reads as missing
HOSTILE_IDS = ['=HYPERLINK("http://x","y")', "+1+1", "-5", "@SUM(A1)", "\tP1", "\rP2", "NA", "null", "007", "P0"]
TEXT = ("method", "task", "scheme", "sample_id", "patient_id", "site")


def _cells(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_no_formula(path: Path) -> None:
    for row in _cells(path):
        for column in TEXT:
            assert not row[column].startswith(FORMULA_START), (path.name, column, row[column])
        for column in ("score", "threshold", "y", "repeat", "fold"):
            float(row[column])  # numbers stay numbers (no guard, no quotes)


class _Seeded:
    """Scores from the sample's position in the test table (deterministic, in [0, 1])."""

    name, description = "seeded", "position-based scores"

    def fit_predict(self, train: dict, test: dict) -> dict:
        return {task: (np.linspace(0.1, 0.9, len(table)), 0.5) for task, table in test.items()}


def test_prediction_csvs_neutralise_formulas_and_read_back_the_same_ids(tmp_path: Path) -> None:
    """Broken promise: predictions/<method>.csv and its fold files held ids such as '=HYPERLINK(...)' as they
    were (a spreadsheet runs them), and reading them back turned "NA"/"null" ids into NaN and "007" stayed text
    only by luck; a resumed fold then no longer matched the cohort's ids."""
    ids = HOSTILE_IDS * 2
    samples = {
        "idh": pd.DataFrame(
            {
                "sample_id": [f"{i}" if k < len(HOSTILE_IDS) else f"{i}#2" for k, i in enumerate(ids)],
                "patient_id": [f"{i}" if k < len(HOSTILE_IDS) else f"{i}#2" for k, i in enumerate(ids)],
                "site": ["=site", "-site"] * len(HOSTILE_IDS),
                "y": [0, 1] * len(HOSTILE_IDS),
            }
        )
    }
    strata = samples["idh"][["patient_id", "site"]].assign(stratum=samples["idh"]["y"].astype(str))
    splits = make_splits(strata, folds=2, repeats=1, seed=0, loso=False)
    predictions = run_method(_Seeded(), samples, splits, tmp_path, schemes=("kfold",))
    for path in [tmp_path / "predictions" / "seeded.csv", *(tmp_path / "predictions" / "seeded").glob("*.csv")]:
        _assert_no_formula(path)
    assert sorted(predictions["sample_id"]) == sorted(samples["idh"]["sample_id"])
    assert set(predictions["site"]) == {"=site", "-site"}
    # a rerun resumes from the fold files and reads the same ids back; so does the metrics stage
    again = run_method(_Seeded(), samples, splits, tmp_path, schemes=("kfold",))
    pd.testing.assert_frame_equal(again, predictions)
    pd.testing.assert_frame_equal(all_predictions(tmp_path)[list(PREDICTION_COLUMNS)], predictions)
    assert predictions["score"].dtype == np.float64


@pytest.fixture(scope="module")
def hostile_cohort(tmp_path_factory: pytest.TempPathFactory):
    cohort = build(tmp_path_factory.mktemp("cohort"), patients=16, sites=2)
    table = cohort.manifest.table.copy()
    names = {p: HOSTILE_IDS[k % len(HOSTILE_IDS)] + f"~{k}" for k, p in enumerate(sorted(set(table["patient_id"])))}
    table["patient_id"] = table["patient_id"].map(names)
    table["site"] = table["site"].map({"site0": "=cmd|' /C calc'!A0", "site1": "@site"})
    return cohort, table


def test_evaluation_with_formula_ids_writes_safe_csvs_and_exact_metrics(hostile_cohort, tmp_path: Path) -> None:
    """Broken promise: an evaluation of a manifest whose patient ids and sites start with '=', '+', '-' or '@'
    wrote them raw into predictions/<method>.csv."""
    cohort, table = hostile_cohort
    config = EvaluateConfig(tasks=("idh", "mgmt"), folds=2, loso=True, n_bootstrap=20, min_per_class=2)
    document = run_evaluation(table, cohort.cache, tmp_path, [MethodSpec("seeded", lambda ctx: _Seeded())], config)
    _assert_no_formula(tmp_path / "predictions" / "seeded.csv")
    predictions = all_predictions(tmp_path)
    assert set(predictions["patient_id"]) <= set(table["patient_id"])
    sites = {entry["site"] for result in document["results"] for entry in result["per_site"]}
    assert sites == {"=cmd|' /C calc'!A0", "@site"}  # the metrics see the ids as the manifest has them
