"""The evaluation harness: methods cross-validated on shared patient-level folds (``umbif benchmark``,
``umbif evaluate``).

Data flow inside a run folder (each stage reusable alone, nnU-Net style)::

    splits.json                      patient-level folds (k-fold x repeats, leave-one-site-out), made once
    embeddings/                      frozen-encoder embeddings (umbif.adapt.embed)
    predictions/<method>/<fold>.csv  one file per finished fold: a killed run resumes at the next fold
    predictions/<method>/permutation.json  the label-permutation null AUCs per task (umbif.eval.permutation)
    predictions/<method>.csv         all folds, PREDICTION_COLUMNS (written when the method is complete)
    predictions/<method>.json        description, settings, wall time and notes of the method (its card)
    metrics.json                     umbif.eval.summary over every method's predictions
    report/                          umbif.eval.report (HTML, Markdown, JSON, PNG)

A *method* is anything with a ``name``, a ``description`` and
``fit_predict(train, test) -> {task: (scores, threshold)}`` over per-task sample tables. The harness
knows no method: it gets :class:`MethodSpec` objects (a name, settings and a builder) and builds a
method only when it has folds left to run. The registry of every method (UMBIF probe and fine-tuning,
the baselines) is ``umbif.eval.methods``; every method is scored on identical folds.

Repeated k-fold: ``EvaluateConfig.repeats`` shuffles; a spec may cap its own with ``max_repeats`` (an
expensive method runs the first repeats only; leave-one-site-out is unchanged). Point values average
the repeats a method has; DeLong comparisons use the repeats both methods have (``umbif.eval.summary``).

Label-permutation p-values (``EvaluateConfig.permutations`` shuffles of the patients' labels, k-fold
repeat 0) for the methods that offer a cheap refit (``permutation_scorer``); the others get a null
p-value and say why in their card. A resumed run reuses the null AUCs already computed.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import Field

from umbif.config import FrozenConfig
from umbif.data.cache import Cache
from umbif.data.samples import TASKS, Cohort, build_cohort
from umbif.eval.permutation import NO_SCORER, REPEAT, SCHEME, null_distribution, permutation_p_value
from umbif.eval.splits import SCHEMES, fold_indices, load_splits, make_splits, patient_strata, save_splits
from umbif.eval.summary import PREDICTION_COLUMNS
from umbif.metrics import roc_auc
from umbif.utils import atomic_write, check_component, csv_safe, csv_unescape, inside, write_json

TEXT_COLUMNS: tuple[str, ...] = ("method", "task", "scheme", "sample_id", "patient_id", "site")  # read as text
_NUMERIC_NA = {c: ["", "nan", "NaN"] for c in PREDICTION_COLUMNS if c not in TEXT_COLUMNS}  # missing numbers only
Scores = dict[str, tuple[np.ndarray, float]]  # task -> (test scores aligned with the test rows, threshold)
PERMUTATION_FILE = "permutation.json"  # in RUN/predictions/<method>/


class Method(Protocol):
    """What ``run_method`` needs from an adaptation method or a baseline.

    A method that cannot score every sample (radiomics needs a segmented tumour) may also have
    ``usable_samples(samples) -> (samples, notes)``; it is then scored on those samples only, and
    compared with other methods on the samples both scored.

    A method that can refit cheaply with the settings its real fit chose may have
    ``permutation_scorer(train, test) -> {task: scorer}`` (``scorer(labels [B, N_train]) -> scores
    [B, N_test]``) for the label-permutation test (:mod:`umbif.eval.permutation`); one whose
    scorer does not apply to some settings says why in ``permutation_unavailable`` (text, else None).
    """

    name: str
    description: str

    def fit_predict(self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]) -> Scores: ...


class EvaluateConfig(FrozenConfig):
    """Settings of ``umbif evaluate`` (saved with the results)."""

    tasks: tuple[str, ...] = TASKS  # tasks to evaluate (those without enough labels are reported and skipped)
    folds: int = 5  # k of the patient-level stratified k-fold
    repeats: int = 1  # k-fold repeated with different shuffles (the mean over repeats is reported)
    loso: bool = True  # also leave-one-site-out (needs at least 2 sites)
    seed: int = 0  # seeds the folds, inner folds and the bootstrap
    n_bootstrap: int = 1000  # patient-level bootstrap replicates for the 95% CIs
    min_per_class: int = 4  # a task needs at least this many patients in each class to be evaluated
    inner_folds: int = 5  # inner CV of the linear probe (regularisation and threshold)
    batch_size: int = 4  # exams per encoder forward pass when embedding
    permutations: int = Field(default=200, ge=0)  # label shuffles of the permutation test (k-fold repeat 0); 0: off
    # what a frozen encoder hands the probe: "lesion" (tokens pooled per tumour compartment + CLS) or "cls"
    readout: Literal["lesion", "cls"] = "lesion"

    def prediction_settings(self) -> dict[str, Any]:
        """The settings the predictions depend on (saved with them): all but the permutation test's."""
        return {k: v for k, v in self.to_dict().items() if k != "permutations"}


def prepare_splits(run_dir: Path, cohort: Cohort, config: EvaluateConfig, splits_path: Path | None) -> dict:
    """Reuse ``splits_path`` or ``RUN/splits.json`` when given or present, else make and save new splits."""
    target = run_dir / "splits.json"
    source = splits_path or (target if target.is_file() else None)
    if source is not None:
        splits = load_splits(source)
        for table in cohort.samples.values():  # raises, naming the problem, if a patient is unknown
            for _ in fold_indices(splits, table, "kfold"):
                break
        if source != target:
            save_splits(splits, target)
        return splits
    splits = make_splits(
        patient_strata(cohort.samples, folds=config.folds),
        folds=config.folds,
        repeats=config.repeats,
        seed=config.seed,
        loso=config.loso,
    )
    save_splits(splits, target)
    return splits


def method_folder(run_dir: Path, name: str) -> Path:
    """``RUN/predictions/<name>/``: the method's fold files and its permutation test."""
    return inside(run_dir / "predictions", run_dir / "predictions" / check_component(name, "method name"))


def _fold_file(folder: Path, scheme: str, repeat: int, fold: int) -> Path:
    return folder / f"{scheme}-r{repeat}-f{fold}.csv"


def fold_plan(splits: dict, samples: dict[str, pd.DataFrame], schemes: Iterable[str]) -> list[tuple]:
    """Every (scheme, repeat, fold) with each task's train/test row positions."""
    plan: dict[tuple[str, int, int], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for scheme in schemes:
        if not splits.get(scheme):
            continue
        for task, table in samples.items():
            for repeat, fold, train, test in fold_indices(splits, table, scheme):
                plan.setdefault((scheme, repeat, fold), {})[task] = (train, test)
    return [(*key, parts) for key, parts in sorted(plan.items())]


def run_method(
    method: Method,
    samples: dict[str, pd.DataFrame],
    splits: dict,
    run_dir: Path,
    schemes: Iterable[str] = SCHEMES,
    settings: dict[str, Any] | None = None,
    on_fold: Callable[[int, int], None] | None = None,
    prepared_s: float = 0.0,
    max_repeats: int | None = None,
) -> pd.DataFrame:
    """Cross-validate ``method`` on every fold of ``splits``; resumable fold by fold.

    Returns the method's predictions (PREDICTION_COLUMNS) and writes them to
    ``RUN/predictions/<method>.csv`` with ``<method>.json`` (description, settings, wall time:
    ``prepared_s``, e.g. embedding or feature extraction, plus the folds, over all sessions).
    ``max_repeats``: run only the first repeats of k-fold (None: all; leave-one-site-out is one repeat).
    """
    folder = method_folder(run_dir, method.name)
    folder.mkdir(parents=True, exist_ok=True)
    plan = [
        step
        for step in fold_plan(splits, samples, schemes)
        if max_repeats is None or step[0] != "kfold" or step[1] < max_repeats
    ]
    started, frames = time.perf_counter(), []
    previous = _read_json(run_dir / "predictions" / f"{method.name}.json").get("wall_time_s_partial", 0.0)
    previous += prepared_s
    for i, (scheme, repeat, fold, parts) in enumerate(plan):
        path = _fold_file(folder, scheme, repeat, fold)
        if not path.is_file():
            train = {t: samples[t].iloc[tr].reset_index(drop=True) for t, (tr, _) in parts.items()}
            test = {t: samples[t].iloc[te].reset_index(drop=True) for t, (_, te) in parts.items()}
            scored = method.fit_predict(train, test)
            frame = _prediction_rows(method.name, scheme, repeat, fold, test, scored)
            write_predictions(frame, path)
            _write_method_card(run_dir, method, settings, previous + time.perf_counter() - started, done=False)
        frames.append(read_predictions(path))
        if on_fold is not None:
            on_fold(i + 1, len(plan))
    predictions = pd.concat(frames, ignore_index=True)[list(PREDICTION_COLUMNS)]
    write_predictions(predictions, run_dir / "predictions" / f"{method.name}.csv")
    _write_method_card(run_dir, method, settings, previous + time.perf_counter() - started, done=True)
    return predictions


def write_predictions(frame: pd.DataFrame, path: Path) -> None:
    """Write a predictions table as CSV, atomically; a text cell a spreadsheet would run as a formula (an id
    starting with ``=``, ``+``, ``-``, ``@``, tab or CR) gets a leading ``'`` (:func:`umbif.utils.csv_safe`).
    Text cells are quoted, so a line break inside an id cannot split its row; numbers stay bare numbers."""
    with atomic_write(path, "w") as handle:
        csv_safe(frame).to_csv(handle, index=False, quoting=csv.QUOTE_NONNUMERIC)


def read_predictions(path: Path) -> pd.DataFrame:
    """A predictions CSV written by :func:`write_predictions`, with its text cells as they were before
    writing: ids stay text (``"007"``, ``"NA"``, ``""``) and a formula guard is taken off again."""
    frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=_NUMERIC_NA)
    return frame.assign(**{c: frame[c].map(csv_unescape) for c in TEXT_COLUMNS if c in frame.columns})


def _prediction_rows(name: str, scheme: str, repeat: int, fold: int, test: dict, scored: Scores) -> pd.DataFrame:
    rows = []
    for task, table in test.items():
        if task not in scored:
            raise ValueError(f"method {name} returned no scores for {task} ({scheme} repeat {repeat} fold {fold})")
        scores, threshold = scored[task]
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(table),) or not np.all(np.isfinite(scores)):
            raise ValueError(f"method {name}, {task}: expected {len(table)} finite scores, got shape {scores.shape}")
        rows.append(
            table[["sample_id", "patient_id", "site", "y"]].assign(
                method=name, task=task, scheme=scheme, repeat=repeat, fold=fold, score=scores, threshold=threshold
            )
        )
    return pd.concat(rows, ignore_index=True)[list(PREDICTION_COLUMNS)]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_method_card(run_dir: Path, method: Method, settings: dict | None, seconds: float, done: bool) -> None:
    card = {"name": method.name, "description": method.description, "settings": settings or {}, "complete": done}
    card["wall_time_s" if done else "wall_time_s_partial"] = round(seconds, 2)
    write_json(run_dir / "predictions" / f"{method.name}.json", card)


def run_permutation_test(
    method: Method,
    samples: dict[str, pd.DataFrame],
    splits: dict,
    run_dir: Path,
    predictions: pd.DataFrame,
    n_permutations: int,
    seed: int,
) -> dict[str, Any]:
    """The label-permutation test of a cross-validated method on k-fold repeat 0 (:mod:`umbif.eval.permutation`).

    Writes ``RUN/predictions/<method>/permutation.json`` (per task: observed AUC, the null AUCs, their
    mean and SD, the p-value; or, for a method without ``permutation_scorer``, the reason) and adds its
    summary to the method's card. Returns that document.
    """
    started = time.perf_counter()
    document: dict[str, Any] = {
        "format": "umbif-permutation",
        "scheme": SCHEME,
        "repeat": REPEAT,
        "unit": "patient",
        "n_permutations": n_permutations,
        "seed": seed,
        "reason": getattr(method, "permutation_unavailable", None),
        "tasks": {},
    }
    if document["reason"] is None and not hasattr(method, "permutation_scorer"):
        document["reason"] = NO_SCORER
    if document["reason"] is None:
        plan = fold_plan(splits, samples, (SCHEME,))
        folds = [parts for scheme, repeat, _, parts in plan if repeat == REPEAT]
        null = null_distribution(method, samples, folds, n_permutations, seed)
        observed = observed_auc(predictions)
        for task, values in null.items():
            auc = observed.get(task)
            document["tasks"][task] = {
                "n": len(samples[task]),
                "observed_auc": auc,
                "p_value": permutation_p_value(auc, values),
                "null_auc_mean": float(np.mean(values)),
                "null_auc_sd": float(np.std(values, ddof=1)),
                "null_auc": [float(v) for v in values],
            }
    document["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(method_folder(run_dir, method.name) / PERMUTATION_FILE, document)
    card_path = run_dir / "predictions" / f"{method.name}.json"
    card = _read_json(card_path)
    card["permutation"] = {k: v for k, v in document.items() if k not in ("format", "tasks")} | {
        "p_value": {task: entry["p_value"] for task, entry in document["tasks"].items()}
    }
    write_json(card_path, card)
    return document


def observed_auc(predictions: pd.DataFrame) -> dict[str, float | None]:
    """Per task, the pooled out-of-fold AUC of k-fold repeat 0 (the statistic the permutation test judges)."""
    rows = predictions[(predictions["scheme"] == SCHEME) & (predictions["repeat"] == REPEAT)]
    out: dict[str, float | None] = {}
    for task, frame in rows.groupby("task"):
        auc = float(roc_auc(frame["y"].to_numpy(), frame["score"].to_numpy()))
        out[str(task)] = auc if math.isfinite(auc) else None
    return out


def read_permutation_test(run_dir: Path, name: str, n_permutations: int, seed: int) -> dict[str, Any] | None:
    """The permutation test stored for a method, if made with these settings (else None: to be redone)."""
    document = _read_json(method_folder(run_dir, name) / PERMUTATION_FILE)
    settings = {k: document.get(k) for k in ("n_permutations", "seed", "scheme", "repeat")}
    wanted = {"n_permutations": n_permutations, "seed": seed, "scheme": SCHEME, "repeat": REPEAT}
    return document if document and settings == wanted else None


def finished_methods(run_dir: Path) -> dict[str, dict]:
    """Cards of the methods whose predictions are complete in ``run_dir``."""
    cards = {}
    for path in sorted((run_dir / "predictions").glob("*.json")):
        card = json.loads(path.read_text())
        if card.get("complete") and path.with_suffix(".csv").is_file():
            cards[card["name"]] = card
    return cards


def all_predictions(run_dir: Path, names: Sequence[str] | None = None) -> pd.DataFrame:
    """The predictions of the finished methods in ``run_dir`` (all, or those in ``names``)."""
    names = list(finished_methods(run_dir)) if names is None else names
    frames = [
        read_predictions(run_dir / "predictions" / f"{check_component(name, 'method name')}.csv") for name in names
    ]
    if not frames:
        raise FileNotFoundError(f"{run_dir}: no finished method predictions; run `umbif evaluate` first")
    return pd.concat(frames, ignore_index=True)


def synthetic_oracle(manifest_path: Path | None) -> dict[str, float]:
    """The cohort's oracle AUC when the manifest comes from ``umbif synth`` (cohort_card.json beside it).

    A task whose oracle AUC is undefined (null: a small cohort with one class of the task) is left out.
    """
    card = manifest_path.parent / "cohort_card.json" if manifest_path is not None else None
    if card is None or not card.is_file():
        return {}
    try:
        aucs = dict(json.loads(card.read_text()).get("oracle_auc") or {})
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{card}: not a cohort card ({err}); run `umbif synth` again") from None
    numbers = {k: v for k, v in aucs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {k: float(v) for k, v in numbers.items() if math.isfinite(v)}


def cohort_summary(table: pd.DataFrame, cohort: Cohort, manifest_path: Path | None) -> dict[str, Any]:
    """What the report says about the data: counts only, no identifiers beyond pseudonymised exam ids."""
    return {
        "manifest": manifest_path.name if manifest_path is not None else None,
        "n_exams": len(table),
        "sites": sorted(set(table["site"]) - {""}),
        "tasks": {
            task: {
                "samples": len(frame),
                "patients": int(frame["patient_id"].nunique()),
                "positive": int(frame["y"].sum()),
                "sites": int(frame["site"].nunique()),
            }
            for task, frame in cohort.samples.items()
        },
        "left_out": cohort.notes,
    }


@dataclass
class Context:
    """What a method builder gets: the cohort, where things live, the settings, progress callbacks."""

    cohort: Cohort
    cache: Cache
    run_dir: Path
    config: EvaluateConfig
    stage: Callable[[str], None]
    on_progress: Callable[[int, int], None] | None = None

    def exam_ids(self) -> list[str]:
        """Every exam a sample needs (follow-ups and baselines), sorted."""
        return self.cohort.exam_ids()


@dataclass
class MethodSpec:
    """A method to run: its name, how to build it (only when it still has folds to run), its settings.

    The settings are saved with the predictions; a run folder that already holds the method with
    other settings (another encoder, say) is refused instead of being mixed up. ``max_repeats`` caps
    the k-fold repeats of an expensive method (None: all of ``EvaluateConfig.repeats``).
    """

    name: str
    build: Callable[[Context], Method]
    settings: dict[str, Any] = field(default_factory=dict)
    max_repeats: int | None = None

    def __post_init__(self) -> None:
        if self.max_repeats is not None and self.max_repeats < 1:
            raise ValueError(f"method {self.name}: max_repeats must be 1 or more (None: all), not {self.max_repeats}")

    def stored_settings(self, config: EvaluateConfig) -> dict[str, Any]:
        """The settings saved with the predictions (as JSON reads them back): the evaluation's, the method's,
        and the repeat cap where it applies."""
        settings = {"evaluate": config.prediction_settings(), **self.settings}
        if self.max_repeats is not None and self.max_repeats < config.repeats:
            settings["max_repeats"] = self.max_repeats
        return json.loads(json.dumps(settings))

    def notes(self, config: EvaluateConfig) -> list[str]:
        """What the report should say about how this method was run."""
        if self.max_repeats is None or self.max_repeats >= config.repeats:
            return []
        return [
            f"k-fold: the first {self.max_repeats} of {config.repeats} repeats (max_repeats, for time); "
            "its DeLong comparisons use the repeats both methods have"
        ]


def run_evaluation(
    table: pd.DataFrame,
    cache: Cache | str | Path,
    run_dir: str | Path,
    specs: Sequence[MethodSpec],
    config: EvaluateConfig | None = None,
    splits_path: str | Path | None = None,
    manifest_path: str | Path | None = None,
    reference_method: str | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Cross-validate every method of ``specs`` on the same splits, then write metrics and the report.

    Methods already complete in ``run_dir`` with the same settings are not run again; a method with
    unfinished folds continues at the next fold. Returns the metrics document (``RUN/metrics.json``).
    """
    from umbif.eval.report import write_report
    from umbif.eval.summary import metrics_document, write_metrics
    from umbif.provenance import provenance

    config = config or EvaluateConfig()
    cache, run_dir = cache if isinstance(cache, Cache) else Cache(cache), Path(run_dir)
    manifest_path = Path(manifest_path) if manifest_path is not None else None
    stage = on_stage or (lambda text: None)
    names = [check_component(s.name, "method name") for s in specs]  # each names files under RUN/predictions
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cohort = build_cohort(table, cache.exam_ids, config.tasks, config.min_per_class)
    splits = prepare_splits(run_dir, cohort, config, Path(splits_path) if splits_path else None)
    schemes = ("kfold", "loso") if config.loso else ("kfold",)
    ctx = Context(cohort, cache, run_dir, config, stage, on_progress)
    done = finished_methods(run_dir)
    notes: dict[str, list[str]] = {}
    for spec in specs:
        settings = spec.stored_settings(config)
        previous = _read_json(run_dir / "predictions" / f"{spec.name}.json").get("settings")
        if previous is not None and previous != settings:
            changed = sorted(k for k in {*previous, *settings} if previous.get(k) != settings.get(k))
            raise ValueError(
                f"{run_dir} already holds {spec.name} made with other settings ({', '.join(changed)} differ); "
                "use another --out folder, or delete that method's predictions to redo it"
            )
        notes[spec.name] = spec.notes(config)
        tested = config.permutations == 0 or read_permutation_test(run_dir, spec.name, config.permutations, config.seed)
        if spec.name in done and tested:
            stage(f"{spec.name}: already complete, reused")
            continue
        started = time.perf_counter()
        method = spec.build(ctx)
        samples = cohort.samples
        if hasattr(method, "usable_samples"):  # e.g. radiomics needs a segmented tumour
            samples, reasons = method.usable_samples(samples)
            for note in reasons:
                stage(f"note: {note}")
        if spec.name in done:
            predictions = read_predictions(run_dir / "predictions" / f"{spec.name}.csv")
        else:
            stage(f"{spec.name}: cross-validation")
            prepared = time.perf_counter() - started
            predictions = run_method(
                method, samples, splits, run_dir, schemes, settings, on_progress, prepared, spec.max_repeats
            )
        if config.permutations:  # redone whenever the predictions were (re)made
            stage(f"{spec.name}: label-permutation test ({config.permutations} shuffles, k-fold repeat 0)")
            run_permutation_test(method, samples, splits, run_dir, predictions, config.permutations, config.seed)
    stage("metrics with patient-level bootstrap CIs")
    cards = {n: c for n, c in finished_methods(run_dir).items() if n in names}
    predictions = all_predictions(run_dir, list(cards))
    null_auc: dict[str, dict[str, list[float]]] = {}
    for name in cards:
        test = read_permutation_test(run_dir, name, config.permutations, config.seed) if config.permutations else None
        if test is not None and test["reason"] is not None:
            notes[name].append(f"no label-permutation p-value: {test['reason']}")
        elif test is not None:
            null_auc[name] = {task: entry["null_auc"] for task, entry in test["tasks"].items()}
    document = metrics_document(
        predictions,
        methods={
            n: {"description": c["description"], "wall_time_s": c.get("wall_time_s"), "notes": notes[n]}
            for n, c in cards.items()
        },
        permutation_null=null_auc,
        provenance=provenance({"evaluate": config.to_dict(), "methods": names}, seed=config.seed),
        cohort=cohort_summary(table, cohort, manifest_path),
        oracle_auc=synthetic_oracle(manifest_path),
        reference_method=reference_method if reference_method in cards else None,
        n_bootstrap=config.n_bootstrap,
        seed=config.seed,
    )
    write_metrics(document, run_dir / "metrics.json")
    stage("report")
    write_report(run_dir, document)
    return document
