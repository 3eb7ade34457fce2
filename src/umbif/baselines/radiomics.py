"""Radiomics + classical machine learning: the IBSI-aligned, hand-crafted-feature baseline.

Features come from pyradiomics (van Griethuysen et al. 2017, the field's reference implementation,
IBSI-aligned) inside the tumour mask (every non-zero label of the cached segmentation, i.e. the
whole tumour) of each cached exam: shape once per exam (it depends on the mask alone), first-order
and texture features (GLCM, GLRLM, GLSZM, GLDM, NGTDM) per present sequence. The images are the
cache's z-scored volumes on its isotropic grid, so intensities are discretised with a fixed bin
width in z units (``configs/radiomics.yaml`` = :data:`DEFAULT_SETTINGS`). A missing sequence gives
NaN features, imputed inside the classifier pipeline (on training rows only).

Feature store, per (settings, cache plan, pyradiomics version) fingerprint, resumable::

    OUT/radiomics/<fingerprint>.parquet   one row per exam: reason ("" = extracted), tumour_voxels,
                                          source (checksum of the cache entry), then the features
    OUT/radiomics/<fingerprint>.json      the settings, plan and versions behind the fingerprint

A rerun extracts only exams not stored yet or whose cache entry changed; the table is replaced
atomically every few exams, so a killed run loses at most those. Exams without a tumour (no
segmentation, or an empty one) or that pyradiomics refuses keep a row with the reason and no
features; :func:`usable_samples` leaves their samples out of the method with a note.

Classifiers (:class:`RadiomicsClassifier`, sklearn-style): median imputation, constant-feature
removal, standardisation, univariate selection, then logistic regression, an RBF SVM (sigmoid
calibrated) or a random forest; hyper-parameters by patient-grouped inner CV (ROC-AUC), the
threshold by :func:`umbif.metrics.choose_threshold` on inner cross-validated training scores.
:class:`RadiomicsMethod` is the ``umbif.eval.evaluate`` method ("radiomics-lr", "-svm", "-rf").

Example::

    features = extract_features("cache/", exam_ids, "run/")
    samples, notes = usable_samples(cohort.samples, features)
    run_method(RadiomicsMethod(features, model="rf"), samples, splits, Path("run/"))
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SelectPercentile, VarianceThreshold, f_classif
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from umbif import SEQUENCES
from umbif.adapt.classifier import pair_array
from umbif.adapt.probe import Scorer, fit_logistic_many, fold_key, inner_splits
from umbif.config import read_yaml
from umbif.data.cache import Cache
from umbif.data.datasets import CacheDataset
from umbif.data.samples import PAIRED_TASKS
from umbif.metrics import choose_threshold
from umbif.utils import atomic_write, json_text, write_text_atomic

INSTALL_HINT = (
    "pyradiomics is not installed in this environment. It has only a source package; build it with\n"
    "    pip install versioneer wheel\n"
    "    pip install --no-build-isolation pyradiomics\n"
    "(`make venv` does this)."
)
FEATURES_VERSION = "1"  # bump when the mask definition or the column naming below changes
META_COLUMNS: tuple[str, ...] = ("reason", "tumour_voxels", "source")  # the store's non-feature columns
TEXTURE_CLASSES: tuple[str, ...] = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
SHAPE_CLASSES: tuple[str, ...] = ("shape", "shape2D")  # mask-only classes: computed once per exam

# pyradiomics parameters (its own params-file format; configs/radiomics.yaml is the same, commented).
DEFAULT_SETTINGS: dict[str, Any] = {
    "setting": {
        "binWidth": 0.25,  # in z-score units (the cache is z-scored): ~30-50 grey levels over a tumour
        "voxelArrayShift": 3,  # energy features need positive values; z-scores inside a tumour rarely go below -3
        "label": 1,  # the mask is made binary (whole tumour = every non-zero seg label)
        "minimumROISize": 8,  # voxels; smaller tumours are reported, not extracted
        "additionalInfo": False,  # no diagnostics columns
    },
    "imageType": {"Original": {}},  # no wavelet/LoG filters: 8-10x slower for the demo's budget
    "featureClass": {name: None for name in ("shape", *TEXTURE_CLASSES)},  # None = every feature of the class
}
MODELS: tuple[str, ...] = ("lr", "svm", "rf")
MODEL_NAMES = {"lr": "logistic regression", "svm": "RBF SVM (sigmoid-calibrated)", "rf": "random forest"}
RF_TREES = 100  # trees per forest (~1 ms each to fit); more changes the AUC little on ~100 patients
GRIDS: dict[str, dict[str, list]] = {  # small on purpose: every point costs inner_folds fits per outer fold
    "lr": {"select__percentile": [10, 100], "model__C": [0.01, 0.1, 1.0]},
    "svm": {"select__percentile": [10, 100], "model__estimator__C": [0.1, 1.0, 10.0]},
    "rf": {"select__percentile": [100], "model__min_samples_leaf": [1, 3]},
}


def import_pyradiomics() -> ModuleType:
    """pyradiomics' ``featureextractor`` module; ``ImportError`` with the install commands when missing."""
    try:
        from radiomics import featureextractor
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    # pyradiomics logs a warning per extraction that GLCM SumAverage equals 2 x JointAverage.
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return featureextractor


def load_settings(settings: dict[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """pyradiomics parameters from a dict, a params YAML file (``configs/radiomics.yaml``) or the defaults.

    Raises ``ValueError`` naming the source when pyradiomics' schema rejects them or no feature
    class is named.
    """
    if settings is None:
        return copy.deepcopy(DEFAULT_SETTINGS)
    source = "settings" if isinstance(settings, dict) else str(settings)
    params = copy.deepcopy(settings) if isinstance(settings, dict) else read_yaml(settings)
    if not params.get("featureClass"):
        raise ValueError(f"radiomics {source}: name the feature classes under featureClass, e.g. shape, glcm")
    import_pyradiomics()  # a missing install is an ImportError with the commands, not a settings error
    try:
        make_extractor(params)
    except Exception as err:  # pykwalify's SchemaError and pyradiomics' own checks
        raise ValueError(f"radiomics {source}: pyradiomics rejects these parameters: {err}") from None
    return params


def make_extractor(params: dict[str, Any]) -> Any:
    """A pyradiomics ``RadiomicsFeatureExtractor`` for ``params`` (validated by pyradiomics' schema)."""
    featureextractor = import_pyradiomics()
    with warnings.catch_warnings():  # pykwalify loads pyradiomics' schema extension with the deprecated load_module
        warnings.simplefilter("ignore", DeprecationWarning)
        return featureextractor.RadiomicsFeatureExtractor(params)


def feature_fingerprint(params: dict[str, Any], plan_fingerprint: str) -> str:
    """Stable short hash of the settings, the cache's preprocessing plan and the pyradiomics version."""
    import_pyradiomics()  # ImportError with the install commands
    import radiomics

    blob = json.dumps([params, plan_fingerprint, radiomics.__version__, FEATURES_VERSION], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _extractors(params: dict[str, Any]) -> tuple[Any, Any]:
    """(shape extractor or None, per-sequence extractor or None) from one set of parameters."""
    classes = params["featureClass"]
    shape = {k: v for k, v in classes.items() if k in SHAPE_CLASSES}
    texture = {k: v for k, v in classes.items() if k not in SHAPE_CLASSES}
    shape_ex = make_extractor({**params, "imageType": {"Original": {}}, "featureClass": shape}) if shape else None
    texture_ex = make_extractor({**params, "featureClass": texture}) if texture else None
    return shape_ex, texture_ex


def sitk_image(array: np.ndarray, spacing: Sequence[float]) -> Any:
    """A SimpleITK image of a cache volume ``[X, Y, Z]`` with the cache spacing (mm).

    SimpleITK reads arrays as ``[z, y, x]``, hence the transpose. Origin and direction stay at their
    defaults: no feature depends on them.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    return image


def _values(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """pyradiomics' output as floats (inf -> NaN, imputed later), diagnostics dropped."""
    out = {}
    for key, value in result.items():
        if not key.startswith("diagnostics_"):
            number = float(np.asarray(value))
            out[prefix + key] = number if np.isfinite(number) else np.nan
    return out


def extract_exam(
    image: np.ndarray,
    present: np.ndarray,
    seg: np.ndarray | None,
    spacing: Sequence[float],
    extractors: tuple[Any, Any],
    margin: int = 5,
) -> dict[str, Any]:
    """Features of one exam: ``{"reason": "", "tumour_voxels": n, <features>}`` or a reason and no features.

    Args:
        image: ``[4, X, Y, Z]`` float, canonical sequence order.
        present: ``[4]`` bool; absent sequences get no columns (NaN in the table).
        seg: ``[X, Y, Z]`` labels, or None when the exam has no segmentation.
        spacing: voxel size in mm.
        extractors: from :func:`_extractors`.
        margin: voxels kept around the tumour's bounding box (pyradiomics' ``padDistance``).

    The volumes are cropped to the tumour's bounding box plus ``margin`` before pyradiomics sees
    them (as its ``preCrop``): features are computed inside the mask, so this changes no value of
    the original image and halves the time at 96^3 (the mask checks scan the whole volume).
    """
    if seg is None:
        return {"reason": "no tumour segmentation (the manifest gives no seg for this exam)", "tumour_voxels": 0}
    tumour = np.asarray(seg) > 0
    voxels = int(tumour.sum())
    if voxels == 0:
        return {"reason": "the tumour segmentation is empty (no voxel above 0)", "tumour_voxels": 0}
    shape_ex, texture_ex = extractors
    corners = np.argwhere(tumour)
    box = tuple(
        slice(max(lo - margin, 0), hi + margin + 1) for lo, hi in zip(corners.min(0), corners.max(0), strict=True)
    )
    tumour = tumour[box]
    mask = sitk_image(tumour.astype(np.uint8), spacing)
    features: dict[str, Any] = {"reason": "", "tumour_voxels": voxels}
    try:
        if shape_ex is not None:  # shape reads only the mask, so the mask serves as the image
            features |= _values(shape_ex.execute(sitk_image(tumour.astype(np.float32), spacing), mask))
        for k, sequence in enumerate(SEQUENCES):
            if present[k] and texture_ex is not None:
                result = texture_ex.execute(sitk_image(np.asarray(image[k][box], dtype=np.float32), spacing), mask)
                features |= _values(result, prefix=f"{sequence}_")
    except ValueError as err:  # pyradiomics' mask checks (tumour too small, too flat)
        return {"reason": f"pyradiomics refused the tumour mask: {err}", "tumour_voxels": voxels}
    return features


def _source(entry: dict[str, Any]) -> str:
    """Checksum of a cache entry's files: a re-preprocessed exam is extracted again."""
    return hashlib.sha256(f"{entry['sha256']['image']}:{entry['sha256']['masks']}".encode()).hexdigest()[:16]


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Meta columns, shape features, then each sequence's features in canonical order (stable within groups)."""
    features = [c for c in table.columns if c not in META_COLUMNS]
    group = {s: i + 1 for i, s in enumerate(SEQUENCES)}
    features.sort(key=lambda c: group.get(c.split("_", 1)[0], 0))
    return table[[c for c in META_COLUMNS if c in table.columns] + features]


def _read_store(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(META_COLUMNS), index=pd.Index([], name="exam_id"))
    try:
        return pd.read_parquet(path)
    except Exception as err:  # a store from another tool or a broken disk: say what to do
        raise ValueError(
            f"{path}: cannot read the radiomics feature store ({err}); delete it to extract again"
        ) from None


def _write_store(path: Path, table: pd.DataFrame) -> None:
    with atomic_write(path, "wb") as handle:
        table.to_parquet(handle)


def _merge(stored: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    new = pd.DataFrame(rows).set_index("exam_id")
    kept = stored.drop(index=new.index, errors="ignore")
    parts = [kept, new] if len(kept) else [new]
    table = pd.concat(parts)
    table["reason"] = table["reason"].astype(str)
    table["tumour_voxels"] = table["tumour_voxels"].astype(int)
    return _ordered(table)


def extract_features(
    cache: Cache | str | Path,
    exam_ids: Sequence[str],
    out_dir: str | Path,
    settings: dict[str, Any] | str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    checkpoint_every: int = 20,
) -> pd.DataFrame:
    """pyradiomics features of cached exams inside their tumour masks; stored, resumable, reused.

    Args:
        cache: an exam cache (a :class:`umbif.data.cache.Cache` or the folder ``umbif preprocess`` wrote;
            the segmentations come from its ``seg`` column).
        exam_ids: exams to extract; ``KeyError`` names any not in the cache.
        out_dir: the store goes to ``out_dir/radiomics/<fingerprint>.parquet``.
        settings: pyradiomics parameters (dict or params YAML); default :data:`DEFAULT_SETTINGS`.
        on_progress: called as ``on_progress(done, total)`` over the exams extracted in this call.
        checkpoint_every: rewrite the store after this many newly extracted exams.

    Returns:
        One row per exam (index ``exam_id``, in the order given): ``reason`` ("" when extracted,
        else why not), ``tumour_voxels``, then the features: ``original_shape_*`` once, and
        ``<sequence>_original_<class>_*`` per sequence (NaN where the sequence is absent).

    Example:
        >>> table = extract_features("cache/", ["site_a-0001-0"], "run/")
        >>> table.loc["site_a-0001-0", "t2_original_firstorder_Mean"]
    """
    params = load_settings(settings)
    cache, out_dir = cache if isinstance(cache, Cache) else Cache(cache), Path(out_dir)
    key = feature_fingerprint(params, cache.fingerprint)
    path = out_dir / "radiomics" / f"{key}.parquet"
    note = {"fingerprint": key, "settings": params, "plan": cache.plan}
    write_text_atomic(path.with_suffix(".json"), json_text(note, default=str) + "\n")
    exam_ids = list(dict.fromkeys(exam_ids))
    dataset = CacheDataset(cache, exam_ids, dtype=torch.float32, masks=True)
    stored = _read_store(path)
    current = dict(zip(stored.index, stored["source"], strict=True))
    todo = [i for i, entry in enumerate(dataset.entries) if current.get(entry["exam_id"]) != _source(entry)]
    extractors = _extractors(params) if todo else (None, None)
    margin = int(params.get("setting", {}).get("padDistance", 5))
    rows: list[dict[str, Any]] = []
    for done, i in enumerate(todo, 1):
        item, entry = dataset[i], dataset.entries[i]
        seg = item["seg"].numpy() if entry["has_seg"] else None
        image, present = item["image"].numpy(), item["present"].numpy()
        features = extract_exam(image, present, seg, entry["spacing"], extractors, margin)
        rows.append({"exam_id": entry["exam_id"], "source": _source(entry), **features})
        if done % checkpoint_every == 0 or done == len(todo):
            stored, rows = _merge(stored, rows), []
            _write_store(path, stored)
        if on_progress is not None:
            on_progress(done, len(todo))
    return stored.loc[exam_ids].drop(columns="source")


def feature_columns(features: pd.DataFrame) -> list[str]:
    """The feature columns of a table from :func:`extract_features` (everything but its meta columns)."""
    return [c for c in features.columns if c not in META_COLUMNS]


def _exam_reasons(features: pd.DataFrame, exam_ids: Sequence[str]) -> list[str]:
    """Why each exam has no features ("" when it has them)."""
    reason = features["reason"].to_dict()
    return [reason.get(e, "not in the radiomics feature table (extract it first)") for e in exam_ids]


def usable_samples(
    samples: dict[str, pd.DataFrame], features: pd.DataFrame
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Each task's samples whose exams (and baseline exams, for paired tasks) have radiomics features.

    Returns:
        ``(samples, notes)``: the kept samples per task, and one note per task that lost samples,
        naming up to five exams and why (no segmentation, empty segmentation, ...).

    Example:
        >>> kept, notes = usable_samples(cohort.samples, features)
    """
    kept, notes = {}, []
    for task, table in samples.items():
        columns = ["exam_id", "baseline_exam_id"] if task in PAIRED_TASKS else ["exam_id"]
        why = np.array([_exam_reasons(features, list(table[c])) for c in columns])  # [C, N]
        bad = (why != "").any(axis=0)
        kept[task] = table[~bad].reset_index(drop=True)
        if bad.any():
            examples = sorted(
                {
                    f"{e} ({r})"
                    for c, col in zip(columns, why, strict=True)
                    for e, r in zip(table[c], col, strict=True)
                    if r
                }
            )
            shown = "; ".join(examples[:5]) + (f"; and {len(examples) - 5} more" if len(examples) > 5 else "")
            notes.append(f"radiomics, {task}: {int(bad.sum())} of {len(table)} samples left out: {shown}")
    return kept, notes


def sample_features(features: pd.DataFrame, table: pd.DataFrame, task: str) -> np.ndarray:
    """``[N, F]`` feature matrix of a task's samples; ``[N, 3F]`` concat(baseline, follow-up, difference)
    for paired tasks. ``ValueError`` names exams without features (use :func:`usable_samples` first)."""
    columns = feature_columns(features)

    def rows(exam_ids: list[str]) -> np.ndarray:
        reasons = _exam_reasons(features, exam_ids)
        missing = [f"{e} ({r})" for e, r in zip(exam_ids, reasons, strict=True) if r]
        if missing:
            raise ValueError(
                f"{len(missing)} exam(s) have no radiomics features: {'; '.join(missing[:5])}; "
                "leave their samples out with umbif.baselines.radiomics.usable_samples first"
            )
        return features.loc[exam_ids, columns].to_numpy(dtype=np.float64)

    followup = rows(list(table["exam_id"]))
    if task not in PAIRED_TASKS:
        return followup
    return pair_array(rows(list(table["baseline_exam_id"])), followup)


def _pipeline(model: str, seed: int) -> Pipeline:
    estimators = {
        "lr": LogisticRegression(class_weight="balanced", max_iter=5000),
        "svm": CalibratedClassifierCV(
            SVC(kernel="rbf", class_weight="balanced"), method="sigmoid", cv=3, ensemble=False
        ),
        "rf": RandomForestClassifier(n_estimators=RF_TREES, class_weight="balanced", random_state=seed, n_jobs=1),
    }
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),  # absent sequences; all-NaN columns are dropped
            ("variance", VarianceThreshold()),  # constant features (f_classif is undefined for them)
            ("scale", StandardScaler()),
            ("select", SelectPercentile(f_classif)),
            ("model", estimators[model]),
        ]
    )


class RadiomicsClassifier(ClassifierMixin, BaseEstimator):
    """Imputation, scaling and univariate selection, then LR / SVM / RF; hyper-parameters by inner CV.

    Args:
        model: "lr", "svm" or "rf" (:data:`GRIDS` lists what is searched).
        inner_folds: patient-grouped, stratified inner folds (fewer when a class has fewer patients).
        threshold_rule: "youden" or "sensitivity" (umbif.metrics.choose_threshold).
        target_sensitivity: for ``threshold_rule="sensitivity"``.
        seed: seeds the inner folds and the forest.

    Fitted attributes: ``best_params_``, ``inner_auc_`` (mean inner-CV AUC of the chosen point),
    ``threshold_`` (chosen on inner cross-validated training scores), ``pipeline_``, ``classes_``.

    Example:
        >>> clf = RadiomicsClassifier("rf").fit(X_train, y_train, groups=patients)
        >>> clf.predict_proba(X_test)[:, 1], clf.threshold_
    """

    def __init__(
        self,
        model: str = "lr",
        inner_folds: int = 5,
        threshold_rule: str = "youden",
        target_sensitivity: float | None = None,
        seed: int = 0,
    ):
        self.model = model
        self.inner_folds = inner_folds
        self.threshold_rule = threshold_rule
        self.target_sensitivity = target_sensitivity
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> RadiomicsClassifier:
        """Fit on ``X`` ``[N, F]`` (NaN = missing) and 0/1 labels ``y``; ``groups`` (patients) group the inner folds."""
        if self.model not in MODELS:
            raise ValueError(f"unknown radiomics model {self.model!r}; choose from {', '.join(MODELS)}")
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(int)
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        splits = inner_splits(y, groups, self.inner_folds, self.seed)
        # Problems this small are slower with several BLAS threads (as in umbif.adapt.probe). f_classif
        # divides by the within-class variance: 0 for a feature constant within each class, whose
        # F = inf ranks it first, as it should.
        with threadpool_limits(limits=1), np.errstate(divide="ignore"):
            search = GridSearchCV(
                _pipeline(self.model, self.seed), GRIDS[self.model], scoring="roc_auc", cv=splits, error_score="raise"
            ).fit(X, y)
            # GridSearchCV keeps no out-of-fold scores: one more pass of the chosen point gives them.
            oof = cross_val_predict(search.best_estimator_, X, y, cv=splits, method="predict_proba")[:, 1]
        self.best_params_ = search.best_params_
        self.inner_auc_ = float(search.best_score_)
        self.threshold_ = choose_threshold(y, oof, rule=self.threshold_rule, target_sensitivity=self.target_sensitivity)
        self.pipeline_ = search.best_estimator_
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``[N, 2]`` class probabilities."""
        with threadpool_limits(limits=1):
            return self.pipeline_.predict_proba(np.asarray(X, dtype=np.float64))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """0/1 decisions at the threshold chosen on the training data."""
        return (self.predict_proba(X)[:, 1] >= self.threshold_).astype(int)


def fixed_lr_scorer(pipeline: Pipeline, X_train: np.ndarray, X_test: np.ndarray) -> Scorer:
    """Permuted training labels ``[P, N]`` -> test log-odds ``[P, M]`` of a fitted radiomics-LR pipeline refitted
    with its hyper-parameters fixed (no inner search, no threshold), for a label-permutation test.

    Imputation, the variance filter and scaling need no labels: they stay as fitted on ``X_train``.
    The univariate selection is redone for every label vector; the logistic regressions are solved
    together (:func:`umbif.adapt.probe.fit_logistic_many`).
    """
    A, B = pipeline[:3].transform(X_train), pipeline[:3].transform(X_test)  # impute, variance, scale
    select, model = pipeline.named_steps["select"], pipeline.named_steps["model"]

    def score(Y: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=1), np.errstate(divide="ignore", invalid="ignore"):
            if select.percentile >= 100:  # every feature, whatever the labels
                coef, intercept = fit_logistic_many(A, Y, model.C, model.class_weight)
                return coef @ B.T + intercept[:, None]
            # f_classif needs two classes; a one-class vector gets a constant score anyway, so any mask will do
            labels = np.where((Y.min(1) < Y.max(1))[:, None], Y, np.arange(Y.shape[1]) % 2)
            masks = np.stack([clone(select).fit(A, y).get_support() for y in labels])
            columns = np.argsort(~masks, axis=1, kind="stable")[:, : masks.sum(1).max()]  # selected first, [P, K]
            keep = np.take_along_axis(masks, columns, axis=1)  # False pads a row with fewer selected
            train_p = (A[:, columns] * keep).transpose(1, 0, 2)  # [P, N, K]
            coef, intercept = fit_logistic_many(train_p, Y, model.C, model.class_weight)
            return np.einsum("mpk,pk->pm", B[:, columns] * keep, coef) + intercept[:, None]

    return score


@dataclass
class RadiomicsMethod:
    """Radiomics features + a classical classifier per task (an ``umbif.eval.evaluate`` method).

    Args:
        features_table: from :func:`extract_features`; give ``run_method`` the samples of
            :func:`usable_samples` (samples without features raise, naming the exams).
        model: "lr", "svm" or "rf"; the method is named ``radiomics-<model>``.
        inner_folds: inner CV folds for model selection and the threshold.
        seed: seeds the inner folds and the forest.

    Example:
        >>> run_method(RadiomicsMethod(features, "svm"), samples, splits, run_dir, settings=method.settings)
    """

    features_table: pd.DataFrame
    model: str = "lr"
    inner_folds: int = 5
    seed: int = 0
    name: str = field(init=False)
    description: str = field(init=False)
    fitted: dict[tuple[str, tuple[str, ...]], Pipeline] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown radiomics model {self.model!r}; choose from {', '.join(MODELS)}")
        self.name = f"radiomics-{self.model}"
        self.description = (
            "pyradiomics features in the tumour mask (shape; first-order and texture per sequence); "
            f"{MODEL_NAMES[self.model]}, inner-CV model selection"
        )

    def usable_samples(self, samples: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], list[str]]:
        """The samples this method can score (see :func:`usable_samples`); ``run_evaluation`` asks for them."""
        return usable_samples(samples, self.features_table)

    @property
    def settings(self) -> dict[str, Any]:
        """What to save with the predictions (``run_method(settings=...)``)."""
        grid = GRIDS[self.model]
        return {"model": self.model, "grid": grid, "inner_folds": self.inner_folds, "seed": self.seed}

    def _classifier(self, table: pd.DataFrame, task: str) -> RadiomicsClassifier:
        clf = RadiomicsClassifier(self.model, inner_folds=self.inner_folds, seed=self.seed)
        clf.fit(sample_features(self.features_table, table, task), table["y"].to_numpy(), table["patient_id"])
        self.fitted[fold_key(task, table)] = clf.pipeline_
        return clf

    def fit_predict(
        self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]
    ) -> dict[str, tuple[np.ndarray, float]]:
        out = {}
        for task, table in train.items():
            clf = self._classifier(table, task)
            scores = clf.predict_proba(sample_features(self.features_table, test[task], task))[:, 1]
            out[task] = (scores, clf.threshold_)
        return out

    @property
    def permutation_unavailable(self) -> str | None:
        """Why this model has no label-permutation test (None for "lr", which refits cheaply)."""
        if self.model == "lr":
            return None
        return f"only radiomics-lr refits cheaply; the {MODEL_NAMES[self.model]} would repeat its training per shuffle"

    def permutation_scorer(self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]) -> dict[str, Scorer]:
        """Per task, :func:`fixed_lr_scorer` of the pipeline the real fit chose on this fold (refitted once on
        the true labels when this session has not seen the fold); radiomics-lr only."""
        if self.model != "lr":
            raise ValueError(f"radiomics-{self.model}: {self.permutation_unavailable}")
        out = {}
        for task, table in train.items():
            pipeline = self.fitted.get(fold_key(task, table)) or self._classifier(table, task).pipeline_
            features = (sample_features(self.features_table, frame, task) for frame in (table, test[task]))
            out[task] = fixed_lr_scorer(pipeline, *features)
        return out
