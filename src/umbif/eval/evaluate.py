"""Cross-validated evaluation of adaptation methods on the glioma tasks (``umbif evaluate``).

Data flow inside a run folder (each stage reusable alone, nnU-Net style)::

    splits.json                      patient-level folds (k-fold x repeats, leave-one-site-out), made once
    embeddings/                      frozen-encoder embeddings (umbif.adapt.embed)
    predictions/<method>/<fold>.csv  one file per finished fold: a killed run resumes at the next fold
    predictions/<method>.csv         all folds, PREDICTION_COLUMNS (written when the method is complete)
    predictions/<method>.json        description, settings and wall time of the method
    metrics.json                     umbif.eval.summary over every method's predictions
    report/                          umbif.eval.report (HTML, Markdown, JSON, PNG)

A *method* is anything with a ``name``, a ``description`` and
``fit_predict(train, test) -> {task: (scores, threshold)}`` over per-task sample tables; the
UMBIF probe and fine-tuning are two, and baselines plug in the same way, so every method is
scored on identical folds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from umbif.config import FrozenConfig
from umbif.eval.splits import fold_indices, load_splits, make_splits, patient_strata, save_splits
from umbif.eval.tasks import PAIRED_TASKS, PREDICTION_COLUMNS, TASKS, labelled_samples
from umbif.utils import atomic_write, write_text_atomic

SCHEMES: tuple[str, ...] = ("kfold", "loso")
Scores = dict[str, tuple[np.ndarray, float]]  # task -> (test scores aligned with the test rows, threshold)


class Method(Protocol):
    """What ``run_method`` needs from an adaptation method or a baseline.

    A method that cannot score every sample (radiomics needs a segmented tumour) may also have
    ``usable_samples(samples) -> (samples, notes)``; it is then scored on those samples only, and
    compared with other methods on the samples both scored.
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


@dataclass
class Cohort:
    """The labelled samples of every evaluable task, and why others were left out."""

    samples: dict[str, pd.DataFrame]  # task -> SAMPLE_COLUMNS table
    notes: list[str] = field(default_factory=list)


def build_cohort(table: pd.DataFrame, cached: set[str], tasks: Iterable[str], min_per_class: int) -> Cohort:
    """Per-task sample tables of the cached exams; tasks with too few labels are dropped with a note."""
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


def exams_of(samples: dict[str, pd.DataFrame]) -> list[str]:
    """Every exam the samples of all tasks need (follow-ups and baselines), sorted."""
    return sorted({e for f in samples.values() for e in (*f["exam_id"], *f["baseline_exam_id"]) if e})


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
) -> pd.DataFrame:
    """Cross-validate ``method`` on every fold of ``splits``; resumable fold by fold.

    Returns the method's predictions (PREDICTION_COLUMNS) and writes them to
    ``RUN/predictions/<method>.csv`` with ``<method>.json`` (description, settings, wall time:
    ``prepared_s``, e.g. embedding or feature extraction, plus the folds, over all sessions).
    """
    folder = run_dir / "predictions" / method.name
    folder.mkdir(parents=True, exist_ok=True)
    plan = fold_plan(splits, samples, schemes)
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
            with atomic_write(path, "w") as handle:
                frame.to_csv(handle, index=False)
            _write_method_card(run_dir, method, settings, previous + time.perf_counter() - started, done=False)
        frames.append(pd.read_csv(path, dtype={"sample_id": str, "patient_id": str, "site": str}))
        if on_fold is not None:
            on_fold(i + 1, len(plan))
    predictions = pd.concat(frames, ignore_index=True)[list(PREDICTION_COLUMNS)]
    with atomic_write(run_dir / "predictions" / f"{method.name}.csv", "w") as handle:
        predictions.to_csv(handle, index=False)
    _write_method_card(run_dir, method, settings, previous + time.perf_counter() - started, done=True)
    return predictions


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
    write_text_atomic(run_dir / "predictions" / f"{method.name}.json", json.dumps(card, indent=2) + "\n")


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
        pd.read_csv(run_dir / "predictions" / f"{name}.csv", dtype={"sample_id": str, "patient_id": str, "site": str})
        for name in names
    ]
    if not frames:
        raise FileNotFoundError(f"{run_dir}: no finished method predictions; run `umbif evaluate` first")
    return pd.concat(frames, ignore_index=True)


METHODS: tuple[str, ...] = ("probe", "finetune")  # what `umbif evaluate --method` accepts


@dataclass
class FinetuneMethod:
    """Fine-tuning of the encoder with task heads (umbif.train.finetune), one model per fold."""

    encoder_dir: Path
    cache_dir: Path
    config: Any  # umbif.train.finetune.FinetuneConfig
    name: str = "umbif-finetune"
    description: str = "UMBIF encoder, fine-tuned with multi-task heads (layer-wise LR decay, early stopping)"

    def fit_predict(self, train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame]) -> Scores:
        from umbif.train.finetune import finetune_and_predict

        return finetune_and_predict(self.encoder_dir, self.cache_dir, train, test, self.config)


def synthetic_oracle(manifest_path: Path | None) -> dict[str, float]:
    """The cohort's oracle AUC when the manifest comes from ``umbif synth`` (cohort_card.json beside it)."""
    card = manifest_path.parent / "cohort_card.json" if manifest_path is not None else None
    if card is None or not card.is_file():
        return {}
    return {k: float(v) for k, v in json.loads(card.read_text()).get("oracle_auc", {}).items()}


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
    cache_dir: Path
    run_dir: Path
    config: EvaluateConfig
    stage: Callable[[str], None]
    on_progress: Callable[[int, int], None] | None = None

    def exam_ids(self) -> list[str]:
        """Every exam a sample needs (follow-ups and baselines), sorted."""
        return exams_of(self.cohort.samples)


@dataclass
class MethodSpec:
    """A method to run: its name, how to build it (only when it still has folds to run), its settings.

    The settings are saved with the predictions; a run folder that already holds the method with
    other settings (another encoder, say) is refused instead of being mixed up.
    """

    name: str
    build: Callable[[Context], Method]
    settings: dict[str, Any] = field(default_factory=dict)


def probe_spec(encoder_dir: str | Path, name: str = "umbif-probe", description: str | None = None) -> MethodSpec:
    """The frozen-encoder linear probe of an exported encoder."""
    from umbif.adapt.embed import encoder_fingerprint

    encoder_dir = Path(encoder_dir)
    text = description or f"{encoder_dir.name} encoder, frozen; linear probe (logistic regression, inner-CV C)"

    def build(ctx: Context) -> Method:
        from umbif.adapt.embed import embed_exams
        from umbif.adapt.probe import ProbeMethod

        exams = ctx.exam_ids()
        ctx.stage(f"{name}: embedding {len(exams)} exams with the frozen encoder")
        embeddings = embed_exams(
            encoder_dir, ctx.cache_dir, exams, ctx.run_dir, ctx.config.batch_size, on_progress=ctx.on_progress
        )
        return ProbeMethod(embeddings, name, text, ctx.config.inner_folds, ctx.config.seed)

    settings = {"encoder": encoder_dir.name, "encoder_sha256": encoder_fingerprint(encoder_dir)}
    return MethodSpec(name, build, settings)


def finetune_spec(
    encoder_dir: str | Path, finetune_config: Any = None, name: str = "umbif-finetune", description: str | None = None
) -> MethodSpec:
    """Fine-tuning an exported encoder with task heads, one model per fold."""
    from umbif.adapt.embed import encoder_fingerprint
    from umbif.train.finetune import FinetuneConfig

    encoder_dir = Path(encoder_dir)
    finetune_config = finetune_config or FinetuneConfig()
    text = description or f"{encoder_dir.name} encoder, fine-tuned with task heads (LLRD, early stopping)"

    def build(ctx: Context) -> Method:
        return FinetuneMethod(encoder_dir, ctx.cache_dir, finetune_config, name, text)

    settings = {
        "encoder": encoder_dir.name,
        "encoder_sha256": encoder_fingerprint(encoder_dir),
        "finetune": finetune_config.to_dict(),
    }
    return MethodSpec(name, build, settings)


def run_evaluation(
    table: pd.DataFrame,
    cache_dir: str | Path,
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
    from umbif.data.cache import read_index
    from umbif.eval.report import write_report
    from umbif.eval.summary import metrics_document, write_metrics
    from umbif.provenance import provenance

    config = config or EvaluateConfig()
    cache_dir, run_dir = Path(cache_dir), Path(run_dir)
    manifest_path = Path(manifest_path) if manifest_path is not None else None
    stage = on_stage or (lambda text: None)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cached = {e["exam_id"] for e in read_index(cache_dir)["exams"]}
    cohort = build_cohort(table, cached, config.tasks, config.min_per_class)
    splits = prepare_splits(run_dir, cohort, config, Path(splits_path) if splits_path else None)
    schemes = ("kfold", "loso") if config.loso else ("kfold",)
    ctx = Context(cohort, cache_dir, run_dir, config, stage, on_progress)
    done = finished_methods(run_dir)
    for spec in specs:
        settings = json.loads(json.dumps({"evaluate": config.to_dict(), **spec.settings}))  # as stored
        previous = _read_json(run_dir / "predictions" / f"{spec.name}.json").get("settings")
        if previous is not None and previous != settings:
            changed = sorted(k for k in {*previous, *settings} if previous.get(k) != settings.get(k))
            raise ValueError(
                f"{run_dir} already holds {spec.name} made with other settings ({', '.join(changed)} differ); "
                "use another --out folder, or delete that method's predictions to redo it"
            )
        if spec.name in done:
            stage(f"{spec.name}: already complete, reused")
            continue
        started = time.perf_counter()
        method = spec.build(ctx)
        samples = cohort.samples
        if hasattr(method, "usable_samples"):  # e.g. radiomics needs a segmented tumour
            samples, notes = method.usable_samples(samples)
            for note in notes:
                stage(f"note: {note}")
        stage(f"{spec.name}: cross-validation")
        prepared = time.perf_counter() - started
        run_method(method, samples, splits, run_dir, schemes, settings, on_progress, prepared)
    stage("metrics with patient-level bootstrap CIs")
    cards = {n: c for n, c in finished_methods(run_dir).items() if n in names}
    predictions = all_predictions(run_dir, list(cards))
    document = metrics_document(
        predictions,
        methods={n: {"description": c["description"], "wall_time_s": c.get("wall_time_s")} for n, c in cards.items()},
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


def evaluate(
    table: pd.DataFrame,
    cache_dir: str | Path,
    encoder_dir: str | Path,
    run_dir: str | Path,
    config: EvaluateConfig | None = None,
    methods: Iterable[str] = ("probe",),
    splits_path: str | Path | None = None,
    finetune_config: Any = None,
    manifest_path: str | Path | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate adaptation methods of an encoder on every task with enough labels; write the report.

    Args:
        table: the manifest table (``Manifest.table``).
        cache_dir: its exam cache (``umbif preprocess``); exams not cached are left out, with a note.
        encoder_dir: an exported encoder (``umbif export``).
        run_dir: the run folder (created; a rerun reuses finished folds and methods).
        config: :class:`EvaluateConfig`.
        methods: any of :data:`METHODS` ("probe" is named umbif-probe, "finetune" umbif-finetune).
        splits_path: reuse these splits (e.g. another run's ``splits.json``) so runs compare fold by fold.
        finetune_config: ``umbif.train.finetune.FinetuneConfig`` for the "finetune" method.
        manifest_path: the manifest file (for the report and the synthetic cohort's oracle AUC).
        on_stage: called with a short text when a stage starts.
        on_progress: called with (done, total) within a stage.

    Returns:
        The metrics document also written to ``RUN/metrics.json``.
    """
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    specs = [probe_spec(encoder_dir) if m == "probe" else finetune_spec(encoder_dir, finetune_config) for m in methods]
    return run_evaluation(
        table, cache_dir, run_dir, specs, config, splits_path, manifest_path, "umbif-probe", on_stage, on_progress
    )
