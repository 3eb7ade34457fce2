"""Radiomics baseline: features against pyradiomics run directly, the feature store, the methods end to end."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from radiomics import featureextractor
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from labelled_cohort import TinyCohort, build
from umbif import SEQUENCES
from umbif.adapt.probe import inner_splits
from umbif.baselines import radiomics
from umbif.baselines.radiomics import (
    DEFAULT_SETTINGS,
    MODELS,
    RadiomicsClassifier,
    RadiomicsMethod,
    extract_features,
    feature_columns,
    load_settings,
    sample_features,
    usable_samples,
)
from umbif.config import read_yaml
from umbif.data.cache import read_index, run_preprocess
from umbif.data.manifest import Manifest
from umbif.data.samples import build_cohort
from umbif.eval.evaluate import run_method
from umbif.eval.splits import load_splits, make_splits, patient_strata, save_splits
from umbif.metrics import choose_threshold

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "radiomics.yaml"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> TinyCohort:
    # 18 patients: the 10th (P009, site0) has no T1
    return build(tmp_path_factory.mktemp("cohort"), patients=18, sites=3, seg=True)


@pytest.fixture(scope="module")
def exam_ids(cohort: TinyCohort) -> list[str]:
    return [e["exam_id"] for e in read_index(cohort.cache)["exams"]]


@pytest.fixture(scope="module")
def features(cohort: TinyCohort, exam_ids: list[str], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return extract_features(cohort.cache, exam_ids, tmp_path_factory.mktemp("run"))


def _direct(cohort: TinyCohort, exam_id: str, params: dict) -> dict[str, dict[str, float]]:
    """pyradiomics on the cache files, read without umbif: {sequence: {feature: value}}."""
    entry = next(e for e in read_index(cohort.cache)["exams"] if e["exam_id"] == exam_id)
    image = np.load(cohort.cache / "exams" / entry["files"]["image"])  # [P, X, Y, Z], present sequences only
    seg = np.load(cohort.cache / "exams" / entry["files"]["masks"])[1]
    with warnings.catch_warnings():  # pykwalify's deprecated load_module
        warnings.simplefilter("ignore", DeprecationWarning)
        extractor = featureextractor.RadiomicsFeatureExtractor(params)

    def volume(array: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)).copy())
        out.SetSpacing(entry["spacing"])
        return out

    mask = volume((seg > 0).astype(np.uint8))
    return {
        sequence: {k: float(v) for k, v in extractor.execute(volume(image[i].astype(np.float32)), mask).items()}
        for i, sequence in enumerate(entry["sequences"])
    }


def test_config_file_is_the_default() -> None:
    assert read_yaml(CONFIG) == DEFAULT_SETTINGS
    assert load_settings(CONFIG) == DEFAULT_SETTINGS


@pytest.mark.parametrize("exam_id", ["P001-1", "P009-0"])  # P009 lacks T1
def test_features_equal_pyradiomics_run_directly(cohort: TinyCohort, features: pd.DataFrame, exam_id: str) -> None:
    direct = _direct(cohort, exam_id, read_yaml(CONFIG))
    row = features.loc[exam_id]
    expected = {k: v for k, v in next(iter(direct.values())).items() if "_shape_" in k}
    for sequence, values in direct.items():
        expected |= {f"{sequence}_{k}": v for k, v in values.items() if "_shape_" not in k}
    assert len(expected) == 14 + 93 * len(direct)  # pyradiomics' default classes: 14 shape, 93 per image
    missing = sorted(set(SEQUENCES) - set(direct))
    assert set(feature_columns(features)) == set(expected) | {
        f"{s}_{k}" for s in missing for k in next(iter(direct.values())) if "_shape_" not in k
    }
    np.testing.assert_allclose(row[list(expected)].to_numpy(float), list(expected.values()), rtol=1e-10)
    absent = [c for c in feature_columns(features) if c.split("_", 1)[0] in missing]
    assert row[absent].isna().all() and (exam_id == "P009-0") == bool(absent)
    assert row["reason"] == "" and row["tumour_voxels"] > 0


def test_shape_features_do_not_depend_on_the_sequence(cohort: TinyCohort, features: pd.DataFrame) -> None:
    params = {**read_yaml(CONFIG), "featureClass": {"shape": None}}
    direct = _direct(cohort, "P002-1", params)
    shape_columns = [c for c in feature_columns(features) if "_shape_" in c]
    assert len(shape_columns) == 14 and all(c.startswith("original_shape_") for c in shape_columns)  # once per exam
    for values in direct.values():
        np.testing.assert_allclose(features.loc["P002-1", list(values)].to_numpy(float), list(values.values()))
    volume = features["original_shape_VoxelVolume"]
    np.testing.assert_allclose(volume, features["tumour_voxels"] * 8.0)  # 2 mm voxels


def test_no_tumour_exams_are_reported_and_left_out(cohort: TinyCohort, tmp_path: Path) -> None:
    table = cohort.manifest.table
    rows = table[table["exam_id"].isin(["P000-0", "P001-0", "P002-0", "P003-0"])].copy()
    seg = np.zeros((32, 32, 32), np.uint8)
    (cohort.manifest_path.parent / "odd").mkdir(exist_ok=True)
    for name, side in (("empty", 0), ("tiny", 2)):  # no voxel; 2 x 2 voxels (below minimumROISize)
        seg[12 : 12 + side, 16 : 16 + side, 16] = 1
        nib.save(
            nib.Nifti1Image(seg, np.diag([2.0, 2.0, 2.0, 1.0])), cohort.manifest_path.parent / f"odd/{name}.nii.gz"
        )
    rows["seg"] = ["", "odd/empty.nii.gz", "odd/tiny.nii.gz", rows["seg"].iloc[3]]
    cache = tmp_path / "cache"
    assert run_preprocess(Manifest(rows.reset_index(drop=True), cohort.manifest_path.parent), cache).ok
    ids = list(rows["exam_id"])
    found = extract_features(cache, ids, tmp_path / "run")
    reasons = found["reason"].to_dict()
    assert "no tumour segmentation" in reasons["P000-0"]
    assert "empty" in reasons["P001-0"]
    assert "pyradiomics refused" in reasons["P002-0"]
    assert reasons["P003-0"] == ""
    assert found.loc[["P000-0", "P001-0", "P002-0"], feature_columns(found)].isna().all().all()

    samples = pd.DataFrame(
        {"sample_id": ids, "patient_id": ["P000", "P001", "P002", "P003"], "site": "s", "exam_id": ids}
    ).assign(baseline_exam_id="", y=[0, 1, 0, 1])
    pairs = samples.assign(exam_id=["P003-0"] * 4, baseline_exam_id=ids)
    kept, notes = usable_samples({"idh": samples, "outcome": pairs}, found)
    assert list(kept["idh"]["exam_id"]) == ["P003-0"] and list(kept["outcome"]["baseline_exam_id"]) == ["P003-0"]
    assert len(notes) == 2 and "3 of 4 samples left out" in notes[0] and "P001-0 (the tumour segmentation" in notes[0]
    with pytest.raises(ValueError, match=r"P000-0 .*usable_samples"):
        sample_features(found, samples, "idh")


def test_features_are_stored_and_reused(
    cohort: TinyCohort, exam_ids: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = radiomics.extract_exam

    def dies_after_five(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(radiomics, "extract_exam", dies_after_five)
    subset = exam_ids[:8]
    with pytest.raises(KeyboardInterrupt):  # killed after 5 exams; checkpoints every 2
        extract_features(cohort.cache, subset, tmp_path, checkpoint_every=2)
    stores = list((tmp_path / "radiomics").glob("*.parquet"))
    assert len(stores) == 1 and len(pd.read_parquet(stores[0])) == 4

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    calls.clear()
    progress: list[tuple[int, int]] = []
    monkeypatch.setattr(radiomics, "extract_exam", counted)
    first = extract_features(cohort.cache, subset, tmp_path, on_progress=lambda *p: progress.append(p))
    assert len(calls) == 4 and progress[-1] == (4, 4)  # only the exams not stored yet

    calls.clear()
    again = extract_features(cohort.cache, subset[::-1], tmp_path)
    assert not calls  # nothing extracted again
    pd.testing.assert_frame_equal(again.loc[subset], first)

    other = {**DEFAULT_SETTINGS, "setting": {**DEFAULT_SETTINGS["setting"], "binWidth": 0.5}}
    coarser = extract_features(cohort.cache, subset[:2], tmp_path, settings=other)
    assert len(calls) == 2 and len(list((tmp_path / "radiomics").glob("*.parquet"))) == 2  # a new fingerprint
    assert (coarser["t2_original_firstorder_Entropy"] < first.loc[subset[:2], "t2_original_firstorder_Entropy"]).all()


@pytest.fixture(scope="module")
def samples(cohort: TinyCohort, exam_ids: list[str], features: pd.DataFrame) -> dict[str, pd.DataFrame]:
    found = build_cohort(cohort.manifest.table, set(exam_ids), ("idh", "outcome"), min_per_class=3)
    kept, notes = usable_samples(found.samples, features)
    assert not notes
    return kept


@pytest.mark.parametrize("model", MODELS)
def test_methods_learn_the_planted_signal(
    model: str, samples: dict[str, pd.DataFrame], features: pd.DataFrame, tmp_path: Path
) -> None:
    # idh: T2 brightness of the lesion; outcome: the follow-up lesion grows (paired features)
    save_splits(make_splits(patient_strata(samples, folds=3), folds=3, seed=0, loso=False), tmp_path / "splits.json")
    method = RadiomicsMethod(features, model=model, inner_folds=3)
    predictions = run_method(method, samples, load_splits(tmp_path / "splits.json"), tmp_path, ("kfold",))
    assert method.name == f"radiomics-{model}" and set(predictions["method"]) == {method.name}
    for task, rows in predictions.groupby("task"):
        assert len(rows) == len(samples[task])
        assert roc_auc_score(rows["y"], rows["score"]) > 0.9, task


def test_threshold_comes_from_training_data_only(samples: dict[str, pd.DataFrame], features: pd.DataFrame) -> None:
    table = samples["idh"]
    train, test = table.iloc[:12].reset_index(drop=True), table.iloc[12:].reset_index(drop=True)
    method = RadiomicsMethod(features, model="lr", inner_folds=3)
    scores, threshold = method.fit_predict({"idh": train}, {"idh": test})["idh"]
    flipped = test.assign(y=1 - test["y"])
    _, threshold_flipped = method.fit_predict({"idh": train}, {"idh": flipped.iloc[::-1]})["idh"]
    assert threshold_flipped == threshold  # test labels and rows do not move it

    # reference: Youden on inner cross-validated predictions of the chosen pipeline, by hand
    X, y, groups = sample_features(features, train, "idh"), train["y"].to_numpy(), train["patient_id"].to_numpy()
    clf = RadiomicsClassifier("lr", inner_folds=3).fit(X, y, groups)
    oof = cross_val_predict(clone(clf.pipeline_), X, y, cv=inner_splits(y, groups, 3, 0), method="predict_proba")
    assert threshold == clf.threshold_ == choose_threshold(y, oof[:, 1])
    np.testing.assert_allclose(scores, clf.predict_proba(sample_features(features, test, "idh"))[:, 1])


def test_bad_input_is_named(monkeypatch: pytest.MonkeyPatch, features: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="unknown radiomics model 'knn'"):
        RadiomicsMethod(features, model="knn")
    with pytest.raises(ValueError, match="featureClass"):
        load_settings({"setting": {"binWidth": 0.25}})
    with pytest.raises(ValueError, match="pyradiomics rejects"):
        load_settings({"setting": {"binWidth": "wide"}, "featureClass": {"glcm": None}})
    monkeypatch.setitem(sys.modules, "radiomics", None)  # as if pyradiomics were not installed
    with pytest.raises(ImportError, match="pip install --no-build-isolation pyradiomics"):
        radiomics.import_pyradiomics()


def test_store_note_names_its_inputs(features: pd.DataFrame, cohort: TinyCohort, tmp_path: Path) -> None:
    extract_features(cohort.cache, ["P000-0"], tmp_path)
    (note,) = (tmp_path / "radiomics").glob("*.json")
    document = json.loads(note.read_text())
    assert document["settings"] == DEFAULT_SETTINGS and note.stem == document["fingerprint"]
    assert (
        document["plan"]["plan_fingerprint"] == json.loads((cohort.cache / "plan.json").read_text())["plan_fingerprint"]
    )


@pytest.mark.parametrize("percentile", [10, 100])
def test_fixed_lr_scorer_refits_the_chosen_pipeline(percentile: int) -> None:
    """With the true labels it reproduces the fitted pipeline (selection redone per label vector); a
    shuffled label vector gets the pipeline refitted on those labels."""
    from sklearn.linear_model import LogisticRegression

    from umbif.baselines.radiomics import fixed_lr_scorer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 40)) * rng.uniform(0.5, 20, 40)
    X[rng.uniform(size=X.shape) < 0.05] = np.nan  # imputed
    y = np.array([0, 1] * 25)
    X[:, 3] += 2 * y
    clf = RadiomicsClassifier("lr", inner_folds=3).fit(X[:40], y[:40])
    tol = LogisticRegression(tol=1e-10, max_iter=10_000, class_weight="balanced")
    pipeline = clf.pipeline_.set_params(select__percentile=percentile, model=tol.set_params(C=0.1))
    shuffled = rng.permutation(y[:40])
    scores = fixed_lr_scorer(pipeline.fit(X[:40], y[:40]), X[:40], X[40:])(np.stack([y[:40], shuffled]))
    np.testing.assert_allclose(scores[0], pipeline.decision_function(X[40:]), atol=1e-5)
    np.testing.assert_allclose(scores[1], clone(pipeline).fit(X[:40], shuffled).decision_function(X[40:]), atol=1e-5)


def test_only_radiomics_lr_has_a_permutation_test(features: pd.DataFrame) -> None:
    assert RadiomicsMethod(features, "lr").permutation_unavailable is None
    assert "only radiomics-lr" in RadiomicsMethod(features, "rf").permutation_unavailable
    with pytest.raises(ValueError, match="radiomics-svm: only radiomics-lr"):
        RadiomicsMethod(features, "svm").permutation_scorer({}, {})
