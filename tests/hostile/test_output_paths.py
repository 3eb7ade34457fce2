"""Hostile names read from files (issue 14, class 1): a task name in a classifier folder, a method name, a cache's
plan fingerprint cannot steer a write outside the output folder. Each is refused with a message naming the file,
and every output path built from such a name is checked to stay inside its root."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import AFFINES, brain_phantom, save_nifti
from labelled_cohort import build
from umbif.adapt.classifier import (
    CARD_FILE,
    HEADS_FILE,
    SavedLinearHead,
    SavedTaskHead,
    load_classifier,
    save_classifier,
)
from umbif.adapt.embed import embed_exams
from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.eval.evaluate import run_method
from umbif.eval.splits import make_splits
from umbif.models.umbif import ModelConfig, UMBIFEncoder
from umbif.predict import predict_exam

CONFIG = ModelConfig(image_size=(32, 32, 32), patch_size=8, dim=48, depth=1, heads=3)
PREPROCESS = PreprocessConfig(shape=(32, 32, 32))
# names a classifier.json could hold: each would put a file outside OUT/EXAM, or anywhere
HOSTILE_TASKS = ["../../../../escaped", "../../patients", "/etc/x", "a/b", "..", ".hidden", "a\\..\\b", "x" * 200, ""]


def _classifier(folder: Path, task: str = "idh") -> Path:
    """A tiny random classifier folder whose one task is called ``task`` in classifier.json and heads.safetensors."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = SavedLinearHead(rng.normal(size=48) / 7, 0.1, np.zeros(48), np.ones(48))
    heads = {"idh": SavedTaskHead(head, "exam", 0.5, "mutant", "wildtype", n_train=30, threshold_rule="youden")}
    save_classifier(folder, UMBIFEncoder(CONFIG), CONFIG, heads, PREPROCESS, (32, 32, 32), "probe")
    if task != "idh":  # rename the task as a hand-edited (or hostile) folder would
        card = json.loads((folder / CARD_FILE).read_text())
        card["tasks"] = {task: card["tasks"]["idh"]}
        (folder / CARD_FILE).write_text(json.dumps(card))
        tensors = {k.replace("idh.", f"{task}.", 1): v for k, v in load_file(folder / HEADS_FILE).items()}
        save_file(tensors, folder / HEADS_FILE)
    return folder


def _exam(folder: Path) -> Path:
    for k, sequence in enumerate(("t1", "t1c", "t2", "flair")):
        save_nifti(folder / f"{sequence}.nii.gz", brain_phantom((40, 40, 40), 0) * (k + 1), AFFINES["ras"])
    return folder


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("task", HOSTILE_TASKS)
def test_a_task_name_that_is_no_safe_file_name_is_refused_at_load(tmp_path: Path, task: str) -> None:
    """Broken promise: load_classifier accepted any task name from classifier.json, and `predict` then wrote
    overlay_<task>.png and saliency_<task>.nii.gz wherever the name led."""
    model = _classifier(tmp_path / "model", task)
    with pytest.raises(ValueError, match=r"classifier\.json: task name .* is not a safe name"):
        load_classifier(model)


def test_predict_with_a_hostile_task_name_writes_nothing_outside_out(tmp_path: Path) -> None:
    """Broken promise: `umbif predict --out OUT` with a shared classifier whose task is "../../../../escaped"
    wrote the task's overlay and map outside OUT (over whatever file was there)."""
    model = _classifier(tmp_path / "shared" / "model", "../../../../escaped")
    exam = _exam(tmp_path / "scans" / "exam-1")
    before = _files(tmp_path)
    result = CliRunner().invoke(
        app, ["predict", "--model", str(model), str(exam), "--out", str(tmp_path / "work" / "out")]
    )
    assert result.exit_code == 1
    assert "task name '../../../../escaped' is not a safe name" in result.output
    assert _files(tmp_path) == before  # nothing written anywhere, inside OUT or out of it


def test_predict_checks_every_output_path_of_a_loaded_classifier(tmp_path: Path) -> None:
    """Broken promise: a Classifier built in code (not loaded, so not checked) with a task called "../../x"
    had predict_exam write overlay and map files outside out_dir; now the resolved path is checked."""
    classifier = load_classifier(_classifier(tmp_path / "model"))
    classifier.heads = {"../../../x": classifier.heads["idh"]}
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(ValueError, match="leads outside"):
        predict_exam(classifier, _exam(tmp_path / "scans" / "exam-1"), out_dir=out)
    assert not (tmp_path / "x.png").exists() and not list(tmp_path.rglob("*x.png"))
    assert not list(tmp_path.rglob("saliency_*"))


class _Fixed:
    """A method that scores every test sample 0.5 (what it scores does not matter here)."""

    description = "constant"

    def __init__(self, name: str):
        self.name = name

    def fit_predict(self, train: dict, test: dict) -> dict:
        return {task: (np.full(len(table), 0.5), 0.5) for task, table in test.items()}


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "-x"])
def test_a_method_name_cannot_leave_the_run_folder(tmp_path: Path, name: str) -> None:
    """Broken promise: run_method wrote predictions/<name>/, <name>.csv and <name>.json wherever a method name
    (from a registry entry or a finished run's card) led."""
    patients = [f"P{k}" for k in range(8)]
    samples = {"idh": pd.DataFrame({"sample_id": patients, "patient_id": patients, "site": "s", "y": [0, 1] * 4})}
    strata = pd.DataFrame({"patient_id": patients, "site": "s", "stratum": [str(y) for y in [0, 1] * 4]})
    splits = make_splits(strata, folds=2, repeats=1, seed=0, loso=False)
    run_dir = tmp_path / "a" / "b" / "run"
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"method name .* is not a safe name"):
        run_method(_Fixed(name), samples, splits, run_dir, schemes=("kfold",))
    assert _files(tmp_path) == before


def test_a_cache_plan_fingerprint_cannot_move_the_embedding_store(tmp_path: Path) -> None:
    """Broken promise: the embedding store was named after the cache's plan fingerprint as plan.json holds it,
    so a cache whose plan.json said "../../../../x" put the .npz and its note outside the store folder."""
    cohort = build(tmp_path / "cohort", patients=4, sites=2)
    plan_file = cohort.cache / "plan.json"
    plan = json.loads(plan_file.read_text())
    plan["plan_fingerprint"] = "../../../../../x"
    plan_file.write_text(json.dumps(plan))
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="not a safe name"):
        embed_exams(cohort.encoder, cohort.cache, store_dir=tmp_path / "store" / "run")
    assert _files(tmp_path) == before
