"""metrics.json from a predictions table: schema, repeat-averaged values, patient-bootstrap CIs, DeLong, checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score, roc_curve

from umbif.eval.summary import (
    PREDICTION_COLUMNS,
    REFERENCE,
    check_predictions,
    metrics_document,
    summarize,
    write_metrics,
)
from umbif.metrics import METRIC_NAMES, delong_test, patient_bootstrap_weights

METHODS = ("umbif-probe", "radiomics-lr")
RESULT_KEYS = {
    "method", "task", "scheme", "n_samples", "n_patients", "n_positive", "repeats", "folds",
    "metrics", "roc", "reliability", "per_site", "comparison",
    "p_permutation", "n_permutations", "null_auc_mean", "null_auc_sd",
}  # fmt: skip


def _predictions(
    n: int = 40, repeats: int = 2, tasks: tuple[str, ...] = ("idh", "outcome"), seed: int = 0
) -> pd.DataFrame:
    """Both methods, kfold (``repeats``) and loso; outcome has two samples per patient; sites A, B."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        per_patient = 2 if task == "outcome" else 1
        y = rng.integers(0, 2, n)
        y[:3], y[3:6] = 0, 1
        patients = [f"p{i // per_patient:03d}" for i in range(n)]
        sites = ["A" if int(p[1:]) % 3 else "B" for p in patients]
        for strength, method in zip((1.5, 0.5), METHODS, strict=True):
            for scheme, n_repeats in (("kfold", repeats), ("loso", 1)):
                for repeat in range(n_repeats):
                    score = np.round(1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(0, 1, n)))), 2)
                    threshold = rng.uniform(0.4, 0.6, 3)  # one threshold per fold
                    fold = rng.integers(0, 3, n) if scheme == "kfold" else np.array([s == "B" for s in sites], int)
                    for i in range(n):
                        rows.append(
                            (method, task, scheme, repeat, int(fold[i]), f"{task}-{i:03d}", patients[i], sites[i],
                             int(y[i]), float(score[i]), float(threshold[fold[i]]))
                        )  # fmt: skip
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def _document(predictions: pd.DataFrame, **kwargs) -> dict:
    methods = {m: {"description": f"{m} test", "wall_time_s": 1.5} for m in predictions["method"].unique()}
    return metrics_document(predictions, methods=methods, provenance={"seed": 0}, n_bootstrap=200, **kwargs)


def _sklearn_metrics(rows: pd.DataFrame) -> dict[str, float]:
    predicted = (rows["score"] >= rows["threshold"]).astype(int)
    return {
        "accuracy": accuracy_score(rows["y"], predicted),
        "sensitivity": recall_score(rows["y"], predicted),
        "specificity": recall_score(rows["y"], predicted, pos_label=0),
        "auc": roc_auc_score(rows["y"], rows["score"]),
    }


def test_document_follows_the_schema_and_is_strict_json(tmp_path: Path) -> None:
    predictions = _predictions()
    document = _document(predictions, reference_method="umbif-probe", cohort={"manifest": "m.csv"})
    assert document["format"] == "umbif-metrics" and document["version"] == 1
    assert document["bootstrap"] == {"n": 200, "level": 0.95, "unit": "patient", "seed": 0}
    assert document["reference"] == REFERENCE and document["oracle_auc"] == {}
    assert document["methods"]["radiomics-lr"] == {"description": "radiomics-lr test", "wall_time_s": 1.5, "notes": []}
    results = document["results"]
    assert [(r["method"], r["task"], r["scheme"]) for r in results] == [
        (m, t, s) for m in METHODS for t in ("outcome", "idh") for s in ("kfold", "loso")
    ]
    for result in results:
        assert set(result) == RESULT_KEYS
        assert set(result["metrics"]) == set(METRIC_NAMES)
        assert all(set(v) == {"value", "low", "high"} for v in result["metrics"].values())
        assert set(result["roc"]) == {"fpr", "tpr"} and len(result["roc"]["fpr"]) == len(result["roc"]["tpr"])
        assert set(result["reliability"]) == {"mean_score", "fraction_positive", "count"}
    path = write_metrics(document, tmp_path / "eval" / "metrics.json")

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in metrics.json")

    assert json.loads(path.read_text(), parse_constant=no_constants) == json.loads(json.dumps(document))


def test_counts_and_repeats() -> None:
    predictions = _predictions(n=40, repeats=3)
    results = {(r["method"], r["task"], r["scheme"]): r for r in summarize(predictions, n_bootstrap=20)}
    outcome = results[("umbif-probe", "outcome", "kfold")]
    truth = predictions[(predictions["task"] == "outcome") & (predictions["repeat"] == 0)]
    truth = truth[(truth["method"] == "umbif-probe") & (truth["scheme"] == "kfold")]
    assert (outcome["n_samples"], outcome["n_patients"]) == (40, 20)  # two samples per patient
    assert outcome["n_positive"] == int(truth["y"].sum())
    assert (outcome["repeats"], outcome["folds"]) == (3, 3)
    assert results[("umbif-probe", "outcome", "loso")]["repeats"] == 1
    assert results[("umbif-probe", "idh", "loso")]["folds"] == 2  # one per site


def test_point_values_are_the_mean_over_repeats_of_pooled_metrics() -> None:
    predictions = _predictions(repeats=3)
    result = next(r for r in summarize(predictions, n_bootstrap=20) if r["task"] == "idh" and r["scheme"] == "kfold")
    rows = predictions[(predictions["method"] == "umbif-probe") & (predictions["task"] == "idh")]
    rows = rows[rows["scheme"] == "kfold"]
    per_repeat = [_sklearn_metrics(r) for _, r in rows.groupby("repeat")]
    for name in ("accuracy", "sensitivity", "specificity", "auc"):
        assert result["metrics"][name]["value"] == pytest.approx(np.mean([m[name] for m in per_repeat]))


@pytest.mark.parametrize("task", ["idh", "outcome"])
def test_intervals_are_a_patient_bootstrap_of_the_repeat_averaged_statistic(task: str) -> None:
    """Against explicit resampling: repeat each patient's rows by their draw count, score with sklearn."""
    predictions = _predictions(repeats=2, seed=1)
    n_boot, seed = 40, 4
    result = next(
        r for r in summarize(predictions, n_bootstrap=n_boot, seed=seed) if (r["task"], r["scheme"]) == (task, "kfold")
    )
    rows = predictions[(predictions["method"] == "umbif-probe") & (predictions["task"] == task)]
    rows = rows[rows["scheme"] == "kfold"].sort_values(["repeat", "sample_id"]).reset_index(drop=True)
    counts, index = patient_bootstrap_weights(rows["patient_id"].to_numpy(), n_boot, seed)
    patients = np.unique(rows["patient_id"])
    replicates = {name: [] for name in ("accuracy", "sensitivity", "specificity", "auc")}
    for b in range(n_boot):
        draws = dict(zip(patients, counts[b].astype(int), strict=True))
        per_repeat = []
        for _, repeat_rows in rows.groupby("repeat"):
            resampled = repeat_rows.loc[repeat_rows.index.repeat(repeat_rows["patient_id"].map(draws))]
            per_repeat.append(_sklearn_metrics(resampled))
        for name in replicates:
            replicates[name].append(np.mean([m[name] for m in per_repeat]))
    assert index.shape == (len(rows),)
    for name, values in replicates.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert (result["metrics"][name]["low"], result["metrics"][name]["high"]) == pytest.approx((low, high)), name


def test_duplicated_samples_of_a_patient_keep_the_interval_wide() -> None:
    """Copying every sample of a patient (same patient id) must not narrow the patient-level interval."""
    once = _predictions(n=40, repeats=1, tasks=("idh",), seed=2)
    twice = pd.concat([once, once.assign(sample_id=once["sample_id"] + "-copy")], ignore_index=True)
    a = summarize(once, n_bootstrap=300)[0]["metrics"]["auc"]
    b = summarize(twice, n_bootstrap=300)[0]["metrics"]["auc"]
    assert b["value"] == pytest.approx(a["value"])
    assert (b["low"], b["high"]) == pytest.approx((a["low"], a["high"]))


def test_roc_reliability_and_per_site_come_from_repeat_0() -> None:
    predictions = _predictions(repeats=2)
    result = next(r for r in summarize(predictions, n_bootstrap=10) if (r["task"], r["scheme"]) == ("idh", "kfold"))
    rows = predictions[(predictions["method"] == "umbif-probe") & (predictions["task"] == "idh")]
    first = rows[(rows["scheme"] == "kfold") & (rows["repeat"] == 0)]
    fpr, tpr, _ = roc_curve(first["y"], first["score"])
    assert result["roc"] == {"fpr": pytest.approx(fpr.tolist()), "tpr": pytest.approx(tpr.tolist())}
    assert sum(result["reliability"]["count"]) == len(first)
    assert [s["site"] for s in result["per_site"]] == ["A", "B"]
    for entry in result["per_site"]:
        site_rows = first[first["site"] == entry["site"]]
        assert (entry["n"], entry["n_positive"]) == (len(site_rows), int(site_rows["y"].sum()))
        expected = _sklearn_metrics(site_rows)
        assert {k: entry[k] for k in expected} == pytest.approx(expected)


def test_comparison_is_delong_on_shared_samples_with_scores_averaged_over_repeats() -> None:
    predictions = _predictions(repeats=2)
    # the reference loses two idh samples: the comparison uses the samples both methods scored
    dropped = predictions["sample_id"].isin(["idh-010", "idh-011"]) & (predictions["method"] == "umbif-probe")
    predictions = predictions[~dropped]
    results = summarize(predictions, n_bootstrap=10, reference_method="umbif-probe")
    for result in results:
        if result["method"] == "umbif-probe":
            assert result["comparison"] is None
            continue
        mine = predictions[(predictions["task"] == result["task"]) & (predictions["scheme"] == result["scheme"])]
        mean = mine.groupby(["method", "sample_id"])["score"].mean().unstack(0).dropna()
        y = mine.groupby("sample_id")["y"].first()[mean.index]
        comparison = result["comparison"]
        assert comparison["against"] == "umbif-probe" and comparison["n"] == len(mean)
        assert comparison["auc"] == pytest.approx(roc_auc_score(y, mean["radiomics-lr"]))
        assert comparison["auc_against"] == pytest.approx(roc_auc_score(y, mean["umbif-probe"]))
        assert comparison["difference"] == pytest.approx(comparison["auc"] - comparison["auc_against"])
        assert comparison["p_value"] == pytest.approx(delong_test(y, mean["radiomics-lr"], mean["umbif-probe"]))
    assert next(r for r in results if r["task"] == "idh" and r["method"] == "radiomics-lr")["comparison"]["n"] == 38
    assert all(r["comparison"] is None for r in summarize(predictions, n_bootstrap=10))


def test_comparison_uses_the_repeats_both_methods_have() -> None:
    """A method run with fewer k-fold repeats (max_repeats) is compared on its repeats only."""
    predictions = _predictions(repeats=3, tasks=("idh",))
    capped = (predictions["method"] == "radiomics-lr") & (predictions["repeat"] > 0)
    predictions = predictions[~capped]
    results = {
        (r["method"], r["scheme"]): r for r in summarize(predictions, n_bootstrap=10, reference_method="umbif-probe")
    }
    assert results[("umbif-probe", "kfold")]["repeats"] == 3 and results[("radiomics-lr", "kfold")]["repeats"] == 1
    comparison = results[("radiomics-lr", "kfold")]["comparison"]
    first = predictions[(predictions["scheme"] == "kfold") & (predictions["repeat"] == 0)]
    scores = first.pivot(index="sample_id", columns="method", values="score")
    y = first.groupby("sample_id")["y"].first()[scores.index]
    assert comparison["repeats"] == 1 and comparison["n"] == len(scores)
    assert comparison["auc_against"] == pytest.approx(roc_auc_score(y, scores["umbif-probe"]))  # repeat 0 only
    assert comparison["p_value"] == pytest.approx(delong_test(y, scores["radiomics-lr"], scores["umbif-probe"]))
    assert results[("radiomics-lr", "loso")]["comparison"]["repeats"] == 1


def test_permutation_p_value_judges_repeat_0_against_the_null() -> None:
    predictions = _predictions(repeats=2, tasks=("idh", "outcome"))
    null = np.random.default_rng(3).uniform(0.3, 0.8, 99)
    document = _document(predictions, permutation_null={"umbif-probe": {"idh": null.tolist()}})
    results = {(r["method"], r["task"], r["scheme"]): r for r in document["results"]}
    first = predictions.query("method == 'umbif-probe' and task == 'idh' and scheme == 'kfold' and repeat == 0")
    observed = roc_auc_score(first["y"], first["score"])
    tested = results[("umbif-probe", "idh", "kfold")]
    assert tested["p_permutation"] == pytest.approx((1 + np.sum(null >= observed)) / 100)
    assert tested["n_permutations"] == 99
    assert tested["null_auc_mean"] == pytest.approx(null.mean())
    assert tested["null_auc_sd"] == pytest.approx(null.std(ddof=1))
    untested = [("umbif-probe", "idh", "loso"), ("umbif-probe", "outcome", "kfold"), ("radiomics-lr", "idh", "kfold")]
    for key in untested:  # leave-one-site-out, a task or a method without a permutation test
        assert {k: results[key][k] for k in ("p_permutation", "n_permutations", "null_auc_mean")} == dict.fromkeys(
            ("p_permutation", "n_permutations", "null_auc_mean")
        )


def test_undefined_values_are_null(tmp_path: Path) -> None:
    """One class only (all positive): AUC, specificity, NPV... are null, never NaN, in the file."""
    predictions = _predictions(tasks=("idh",)).assign(y=1)
    document = _document(predictions, reference_method="umbif-probe")
    result = document["results"][0]
    for name in ("auc", "specificity", "balanced_accuracy"):
        assert result["metrics"][name] == {"value": None, "low": None, "high": None}
    assert result["metrics"]["sensitivity"]["value"] is not None
    assert result["roc"] == {"fpr": [], "tpr": []} and result["per_site"][0]["auc"] is None
    assert document["results"][2]["comparison"] is None  # DeLong needs both classes
    write_metrics(document, tmp_path / "metrics.json")


def test_write_metrics_refuses_nan_naming_where(tmp_path: Path) -> None:
    document = _document(_predictions(tasks=("idh",)))
    document["results"][1]["metrics"]["auc"]["low"] = math.nan
    path = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"document\.results\[1\]\.metrics\.auc\.low is NaN"):
        write_metrics(document, path)
    assert not path.exists() and not list(tmp_path.iterdir())


def _damage(frame: pd.DataFrame, column: str, value: object) -> pd.DataFrame:
    frame = frame.copy()
    frame[column] = frame[column].astype(object)
    frame.loc[3, column] = value
    return frame


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda f: f.drop(columns=["threshold"]), r"lack column\(s\) \['threshold'\]"),
        (lambda f: f.iloc[:0], "empty"),
        (lambda f: _damage(f, "y", 2), "y must be 0 or 1"),
        (lambda f: _damage(f, "score", 1.2), r"score must be a probability in \[0, 1\]"),
        (lambda f: _damage(f, "score", np.nan), "score must be a probability"),
        (lambda f: _damage(f, "threshold", np.inf), "threshold must be finite"),
        (lambda f: _damage(f, "task", "survival"), "task must be one of"),
        (lambda f: _damage(f, "scheme", "holdout"), "scheme must be one of"),
        (lambda f: _damage(f, "repeat", 0.5), "repeat must be an integer"),
        (lambda f: pd.concat([f, f.iloc[[5]]]), "more than one row"),
        (lambda f: _damage(f, "patient_id", "someone-else"), "more than one patient_id"),
    ],
)
def test_bad_predictions_are_named(damage, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_predictions(damage(_predictions(n=10, repeats=1, tasks=("idh",))))


def test_labels_must_agree_across_methods() -> None:
    predictions = _predictions(n=10, repeats=1, tasks=("idh",))
    first = predictions.index[predictions["sample_id"] == "idh-007"][0]
    predictions.loc[first, "y"] = 1 - predictions.loc[first, "y"]
    with pytest.raises(ValueError, match="more than one y"):
        check_predictions(predictions)


def test_reference_method_and_descriptions_are_required() -> None:
    predictions = _predictions(n=10, repeats=1, tasks=("idh",))
    with pytest.raises(ValueError, match="reference method 'cnn' has no predictions"):
        summarize(predictions, reference_method="cnn")
    with pytest.raises(ValueError, match=r"\['radiomics-lr'\] have predictions but no entry"):
        metrics_document(predictions, methods={"umbif-probe": {"description": "x"}}, provenance={})
