"""The evaluation harness end to end on a tiny labelled cohort (the UMBIF probe through the method registry,
as `umbif evaluate` runs it): splits, folds, resume, report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from labelled_cohort import TinyCohort, build
from umbif.cli import app
from umbif.data.samples import build_cohort
from umbif.eval.evaluate import EvaluateConfig, prepare_splits, run_method
from umbif.eval.methods import benchmark
from umbif.eval.summary import PREDICTION_COLUMNS


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> TinyCohort:
    return build(tmp_path_factory.mktemp("cohort"), patients=24, sites=3)


# the harness on CLS embeddings: this cohort has no segmentations (the lesion readout is tested in test_methods)
CONFIG = EvaluateConfig(tasks=("idh", "mgmt", "outcome"), folds=3, n_bootstrap=200, inner_folds=3, readout="cls")


@pytest.fixture(scope="module")
def run(cohort: TinyCohort, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    config = CONFIG
    document = benchmark(
        cohort.manifest.table,
        cohort.cache,
        run_dir,
        ["umbif-probe"],
        {"umbif": cohort.encoder},
        config,
        manifest_path=cohort.manifest_path,
    )
    return run_dir, document


def test_evaluate_writes_every_stage(run: tuple[Path, dict]) -> None:
    run_dir, document = run
    for name in ("splits.json", "metrics.json", "predictions/umbif-probe.csv", "report/report.html"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text())["results"] == document["results"]
    combos = {(r["task"], r["scheme"]) for r in document["results"]}
    assert combos == {(t, s) for t in ("idh", "mgmt", "outcome") for s in ("kfold", "loso")}
    assert document["cohort"]["tasks"]["idh"]["patients"] == 24
    assert document["cohort"]["tasks"]["outcome"]["samples"] == 24  # one pair per patient


def test_every_sample_is_predicted_once_per_scheme_by_a_model_that_never_saw_its_patient(
    run: tuple[Path, dict], cohort: TinyCohort
) -> None:
    run_dir, _ = run
    predictions = pd.read_csv(run_dir / "predictions" / "umbif-probe.csv", dtype={"patient_id": str})
    assert list(predictions.columns) == list(PREDICTION_COLUMNS)
    counts = predictions.groupby(["task", "scheme", "repeat", "sample_id"]).size()
    assert (counts == 1).all()
    assert len(predictions.query("task == 'idh' and scheme == 'kfold'")) == 24
    splits = json.loads((run_dir / "splits.json").read_text())
    for entry in splits["kfold"]:
        rows = predictions.query(f"scheme == 'kfold' and fold == {entry['fold']}")
        assert set(rows["patient_id"]) <= set(entry["test_patients"])
    loso = predictions.query("scheme == 'loso'")
    assert (loso.groupby("fold")["site"].nunique() == 1).all()  # a loso fold tests one site


def test_planted_signal_is_found(run: tuple[Path, dict]) -> None:
    _, document = run
    auc = {(r["task"], r["scheme"]): r["metrics"]["auc"] for r in document["results"]}
    assert auc[("idh", "kfold")]["value"] > 0.8  # IDH-mutant tumours are much brighter on T2
    low, high = auc[("idh", "kfold")]["low"], auc[("idh", "kfold")]["high"]
    assert low <= auc[("idh", "kfold")]["value"] <= high


def test_rerun_reuses_the_method_and_another_encoder_is_refused(
    run: tuple[Path, dict], cohort: TinyCohort, tmp_path: Path
) -> None:
    import torch

    from umbif.models.io import load_encoder, save_encoder

    run_dir, document = run
    stages: list[str] = []
    table = cohort.manifest.table
    again = benchmark(
        table, cohort.cache, run_dir, ["umbif-probe"], {"umbif": cohort.encoder}, CONFIG, on_stage=stages.append
    )
    assert "umbif-probe: already complete, reused" in stages
    assert again["results"] == document["results"]
    encoder = load_encoder(cohort.encoder)
    with torch.no_grad():
        encoder.cls_token.add_(1.0)
    other = save_encoder(encoder, encoder.config, tmp_path / "encoder")
    with pytest.raises(ValueError, match=r"other settings \(encoder_sha256 differ\)"):
        benchmark(table, cohort.cache, run_dir, ["umbif-probe"], {"umbif": other}, CONFIG)


@dataclass
class Recorder:
    """A method that scores by a fixed feature and records what it was trained on."""

    name: str = "recorder"
    description: str = "test method"
    calls: list[tuple[set, set]] = field(default_factory=list)

    def fit_predict(self, train: dict, test: dict) -> dict:
        out = {}
        for task, table in test.items():
            self.calls.append((set(train[task]["patient_id"]), set(table["patient_id"])))
            out[task] = (np.full(len(table), 0.5), 0.5)
        return out


def test_run_method_resumes_fold_by_fold(cohort: TinyCohort, tmp_path: Path) -> None:
    config = EvaluateConfig(tasks=("idh",), folds=3, loso=False)
    table = cohort.manifest.table
    samples = build_cohort(table, set(table["exam_id"]), config.tasks, config.min_per_class)
    splits = prepare_splits(tmp_path, samples, config, None)
    method = Recorder()
    first = run_method(method, samples.samples, splits, tmp_path, schemes=("kfold",))
    assert len(method.calls) == 3 and all(not (tr & te) for tr, te in method.calls)
    (tmp_path / "predictions" / "recorder" / "kfold-r0-f1.csv").unlink()  # as if killed during fold 1
    again = run_method(method, samples.samples, splits, tmp_path, schemes=("kfold",))
    assert len(method.calls) == 4  # only the missing fold ran again
    pd.testing.assert_frame_equal(first, again)
    card = json.loads((tmp_path / "predictions" / "recorder.json").read_text())
    assert card["complete"] and card["wall_time_s"] >= 0


def test_splits_are_reused(cohort: TinyCohort, run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = run
    config = EvaluateConfig(tasks=("idh",), folds=4, seed=7)  # other settings: the given splits still win
    table = cohort.manifest.table
    samples = build_cohort(table, set(table["exam_id"]), config.tasks, config.min_per_class)
    splits = prepare_splits(tmp_path, samples, config, run_dir / "splits.json")
    assert splits == json.loads((run_dir / "splits.json").read_text())
    assert json.loads((tmp_path / "splits.json").read_text()) == splits


def test_too_few_labels_and_unknown_methods_are_explained(cohort: TinyCohort, tmp_path: Path) -> None:
    table = cohort.manifest.table
    with pytest.raises(ValueError, match="no task has enough"):
        build_cohort(table, set(table["exam_id"]), ("idh",), min_per_class=100)
    with pytest.raises(ValueError, match="unknown method"):
        benchmark(table, cohort.cache, tmp_path, ["umbif-magic"], {"umbif": cohort.encoder})


def test_cli_evaluate(cohort: TinyCohort, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "evaluate", str(cohort.manifest_path), "--cache", str(cohort.cache), "--encoder", str(cohort.encoder),
            "--out", str(tmp_path / "run"), "--tasks", "idh", "--folds", "3", "--no-loso", "--bootstrap", "100",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "idh" in result.output and (tmp_path / "run" / "report" / "report.html").is_file()
    args = ["evaluate", str(cohort.manifest_path), "--cache", str(cohort.cache), "--encoder", str(cohort.encoder)]
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x"), "--tasks", "grade"])
    assert bad.exit_code == 1 and "unknown task 'grade'" in bad.output


@dataclass
class Partial(Recorder):
    """A method that cannot score patient P000 (like radiomics without a tumour mask)."""

    name: str = "partial"

    def usable_samples(self, samples: dict) -> tuple[dict, list[str]]:
        kept = {t: f[f["patient_id"] != "P000"].reset_index(drop=True) for t, f in samples.items()}
        return kept, ["P000 has no tumour mask"]


def test_a_method_can_score_fewer_samples(cohort: TinyCohort, tmp_path: Path) -> None:
    from umbif.eval.evaluate import MethodSpec, run_evaluation

    config = EvaluateConfig(tasks=("idh",), folds=3, loso=False, n_bootstrap=50)
    stages: list[str] = []
    specs = [MethodSpec("partial", lambda ctx: Partial()), MethodSpec("recorder", lambda ctx: Recorder())]
    document = run_evaluation(cohort.manifest.table, cohort.cache, tmp_path, specs, config, on_stage=stages.append)
    n = {r["method"]: r["n_samples"] for r in document["results"]}
    assert n == {"partial": 23, "recorder": 24}
    assert "note: P000 has no tumour mask" in stages


def test_permutation_p_values_are_stored_in_the_metrics_and_reused(
    run: tuple[Path, dict], cohort: TinyCohort, tmp_path: Path
) -> None:
    import shutil

    run_dir, document = tmp_path / "run", run[1]
    shutil.copytree(run[0], run_dir)  # the shared run stays as it was
    stored = json.loads((run_dir / "predictions" / "umbif-probe" / "permutation.json").read_text())
    assert (stored["n_permutations"], stored["scheme"], stored["repeat"], stored["reason"]) == (200, "kfold", 0, None)
    for result in document["results"]:
        entry = stored["tasks"][result["task"]]
        if result["scheme"] == "loso":
            assert result["p_permutation"] is None and result["n_permutations"] is None
            continue
        assert result["n_permutations"] == 200 == len(entry["null_auc"])
        assert result["p_permutation"] == pytest.approx(entry["p_value"], abs=1e-6)
        assert result["null_auc_sd"] == pytest.approx(np.std(entry["null_auc"], ddof=1), abs=1e-5)
    p = {r["task"]: r["p_permutation"] for r in document["results"] if r["scheme"] == "kfold"}
    assert p["idh"] < 0.01  # the planted signal is far outside the null
    card = json.loads((run_dir / "predictions" / "umbif-probe.json").read_text())
    assert card["permutation"]["n_permutations"] == 200 and card["permutation"]["p_value"]["idh"] == p["idh"]
    # a rerun reuses the test; another number of shuffles redoes the test only (the predictions stay)
    before = (run_dir / "predictions" / "umbif-probe" / "permutation.json").stat().st_mtime_ns
    stages: list[str] = []
    args = (cohort.manifest.table, cohort.cache, run_dir, ["umbif-probe"], {"umbif": cohort.encoder})
    benchmark(*args, CONFIG, on_stage=stages.append)
    assert (run_dir / "predictions" / "umbif-probe" / "permutation.json").stat().st_mtime_ns == before
    assert not any("permutation" in s for s in stages)
    fewer = benchmark(*args, CONFIG.model_copy(update={"permutations": 20}), on_stage=stages.append)
    assert "umbif-probe: label-permutation test (20 shuffles, k-fold repeat 0)" in stages
    assert not any("cross-validation" in s for s in stages)
    assert {r["n_permutations"] for r in fewer["results"] if r["scheme"] == "kfold"} == {20}
    off = benchmark(*args, CONFIG.model_copy(update={"permutations": 0}))
    assert all(r["p_permutation"] is None for r in off["results"])


@dataclass
class Capped(Recorder):
    """A method without a permutation scorer, run with fewer k-fold repeats."""

    name: str = "capped"


def test_max_repeats_and_methods_without_a_permutation_test(cohort: TinyCohort, tmp_path: Path) -> None:
    from umbif.eval.evaluate import MethodSpec, run_evaluation
    from umbif.eval.permutation import NO_SCORER

    config = EvaluateConfig(tasks=("idh",), folds=3, repeats=3, loso=False, n_bootstrap=20, permutations=10)
    specs = [MethodSpec("capped", lambda ctx: Capped(), max_repeats=1), MethodSpec("recorder", lambda ctx: Recorder())]
    document = run_evaluation(cohort.manifest.table, cohort.cache, tmp_path, specs, config, reference_method="recorder")
    results = {r["method"]: r for r in document["results"]}
    assert results["capped"]["repeats"] == 1 and results["recorder"]["repeats"] == 3
    assert results["capped"]["comparison"]["repeats"] == 1  # DeLong on the repeats both have
    predictions = pd.read_csv(tmp_path / "predictions" / "capped.csv")
    assert set(predictions["repeat"]) == {0}
    card = json.loads((tmp_path / "predictions" / "capped.json").read_text())
    assert card["settings"]["max_repeats"] == 1 and "permutations" not in card["settings"]["evaluate"]
    assert card["permutation"]["reason"] == NO_SCORER and card["permutation"]["p_value"] == {}
    assert all(r["p_permutation"] is None for r in document["results"])
    notes = document["methods"]["capped"]["notes"]
    assert any("first 1 of 3 repeats" in n for n in notes) and f"no label-permutation p-value: {NO_SCORER}" in notes
    assert document["methods"]["recorder"]["notes"] == [f"no label-permutation p-value: {NO_SCORER}"]
    with pytest.raises(ValueError, match="max_repeats must be 1 or more"):
        MethodSpec("bad", lambda ctx: Recorder(), max_repeats=0)
