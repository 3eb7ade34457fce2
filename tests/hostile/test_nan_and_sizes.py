"""No NaN reaches a decision or a file, and no size read from a file allocates without bounds (issue 14, class 4).

Weights must be finite floating-point tensors (refused at load, naming the file and the tensor); a probability that
is not finite makes its task fail with a reason and no label; every JSON file is strict (no ``NaN``/``Infinity``);
``umbif synth`` writes null for an undefined oracle AUC and ``evaluate`` copes with it; a model config with
absurd sizes is refused before anything is built, with an estimate of the memory it would need."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import umbif.models.io
from conftest import AFFINES, brain_phantom, save_nifti
from labelled_cohort import build
from umbif.adapt.classifier import (
    ENCODER_FILE,
    HEADS_FILE,
    SavedLinearHead,
    SavedTaskHead,
    load_classifier,
    save_classifier,
)
from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.eval.evaluate import EvaluateConfig, MethodSpec, run_evaluation, synthetic_oracle
from umbif.models.io import CONFIG_FILE, load_encoder, save_encoder
from umbif.models.umbif import ModelConfig, UMBIFEncoder
from umbif.predict import predict_exam
from umbif.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CONFIG = ModelConfig(image_size=(32, 32, 32), patch_size=8, dim=48, depth=1, heads=3)
PREPROCESS = PreprocessConfig(shape=(32, 32, 32))


def strict_json(text: str) -> Any:
    """Parse as a strict JSON reader would: ``NaN`` and ``Infinity`` are not JSON."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _classifier(folder: Path) -> Path:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = SavedLinearHead(rng.normal(size=48) / 7, 0.1, np.zeros(48), np.ones(48))
    heads = {"idh": SavedTaskHead(head, "exam", 0.5, "mutant", "wildtype", n_train=30, threshold_rule="youden")}
    return save_classifier(folder, UMBIFEncoder(CONFIG), CONFIG, heads, PREPROCESS, (32, 32, 32), "probe")


def _edit_tensor(file: Path, key: str, change: str) -> None:
    tensors = load_file(file)
    tensor = tensors[key]
    if change == "int":
        tensors[key] = torch.ones_like(tensor, dtype=torch.int32)
    else:
        tensor.view(-1)[0] = float(change)
    save_file(tensors, file)


def _exam(folder: Path) -> Path:
    for k, sequence in enumerate(("t1", "t1c", "t2", "flair")):
        save_nifti(folder / f"{sequence}.nii.gz", brain_phantom((40, 40, 40), 0) * (k + 1), AFFINES["ras"])
    return folder


# ----------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("key", "change"),
    [("blocks.0.attn.qkv.weight", "nan"), ("norm.bias", "inf"), ("cls_token", "-inf"), ("patch_embed.0.weight", "int")],
)
def test_encoder_weights_must_be_finite_floats(tmp_path: Path, key: str, change: str) -> None:
    """Broken promise: an encoder.safetensors holding a NaN, an infinity or an integer tensor loaded silently
    (the integers cast into float parameters) and every embedding became NaN or garbage."""
    folder = save_encoder(UMBIFEncoder(CONFIG), CONFIG, tmp_path / "encoder")
    _edit_tensor(folder / ENCODER_FILE, key, change)
    expected = "has dtype int32" if change == "int" else r"holds 1 NaN or infinite value\(s\)"
    with pytest.raises(ValueError, match=rf"encoder\.safetensors: tensor '{key}' {expected}"):
        load_encoder(folder)


@pytest.mark.parametrize(("key", "change"), [("idh.weight", "nan"), ("idh.mean", "inf"), ("idh.scale", "int")])
def test_head_weights_must_be_finite_floats(tmp_path: Path, key: str, change: str) -> None:
    """Broken promise: heads.safetensors with an integer tensor was cast silently, and a NaN was reported without
    naming the tensor."""
    model = _classifier(tmp_path / "model")
    _edit_tensor(model / HEADS_FILE, key, change)
    with pytest.raises(ValueError, match=rf"heads\.safetensors: tensor '{key}'"):
        load_classifier(model)


def test_a_non_finite_probability_fails_its_task_and_gives_no_label(tmp_path: Path) -> None:
    """Broken promise: finite but out-of-range encoder weights (a final norm scaled to 3e38) gave a NaN probability,
    which became a decision (NaN >= threshold is False: the negative label) and a NaN in prediction.json."""
    model = _classifier(tmp_path / "model")
    tensors = load_file(model / ENCODER_FILE)
    tensors["norm.weight"] = torch.full_like(tensors["norm.weight"], 3e38)
    save_file(tensors, model / ENCODER_FILE)
    exam = _exam(tmp_path / "scans" / "exam-1")
    result = predict_exam(model, exam, out_dir=tmp_path / "out")
    task = result["tasks"]["idh"]
    assert task["status"] == "failed" and "not a finite number" in task["reason"]
    assert "label" not in task and "decision" not in task and "probability" not in task
    written = strict_json((tmp_path / "out" / "prediction.json").read_text())
    assert written["tasks"]["idh"]["status"] == "failed"
    assert not list((tmp_path / "out").glob("overlay_*"))
    cli = CliRunner().invoke(app, ["predict", "--model", str(model), str(exam), "--out", str(tmp_path / "cli")])
    assert cli.exit_code == 1 and "failed" in cli.output and "mutant" not in cli.output and "wildtype" not in cli.output


# ----------------------------------------------------------------------------------------------- sizes


def _hostile_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: dict[str, Any]) -> Path:
    """An encoder folder whose config.json asks for ``sizes``; building any encoder fails the test."""
    folder = save_encoder(UMBIFEncoder(CONFIG), CONFIG, tmp_path / "encoder")
    card = json.loads((folder / CONFIG_FILE).read_text())
    card["model"].update(sizes)
    (folder / CONFIG_FILE).write_text(json.dumps(card))

    def build_nothing(config: ModelConfig) -> None:
        raise AssertionError(f"an encoder was built for {sizes}: the sizes must be refused before allocating")

    monkeypatch.setattr(umbif.models.io, "UMBIFEncoder", build_nothing)
    return folder


@pytest.mark.parametrize(
    "sizes",
    [
        {"depth": 10**6},
        {"dim": 10**6, "heads": 1},
        {"image_size": [10**5] * 3},
        {"image_size": [1024] * 3, "patch_size": 8},  # 2 million patches per sequence
        {"dim": 4096, "heads": 64, "depth": 64},  # each size allowed, together 48 GiB
    ],
)
def test_oversized_configs_are_refused_with_a_memory_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: dict[str, Any]
) -> None:
    """Broken promise: config.json sizes had no upper bound; depth 10**6 or a 10**5-voxel grid started allocating
    (hours, then out of memory) instead of being refused."""
    folder = _hostile_config(tmp_path, monkeypatch, sizes)
    with pytest.raises(ValueError, match=r"(?s)config\.json: .*model too large.* would need about [0-9.]+ [GT]iB"):
        load_encoder(folder)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"dim": -1}, "sizes must be at least 1: dim -1"),
        ({"image_size": [0, 0, 0]}, r"sizes must be at least 1: image_size \(0, 0, 0\)"),
        ({"image_size": [-16, 32, 32]}, r"sizes must be at least 1: image_size \(-16, 32, 32\)"),
        ({"patch_size": 0}, "sizes must be at least 1: patch_size 0"),
        ({"depth": 0, "num_sequences": -2}, "sizes must be at least 1: num_sequences -2, depth 0"),
        ({"patch_size": 64}, r"patch_size 64 is larger than the image \(32, 32, 32\)"),
        ({"num_sequences": 9}, "num_sequences 9: umbif knows 4"),
        ({"mlp_ratio": float("nan")}, "mlp_ratio must be positive"),
        ({"mlp_ratio": 0.0}, "mlp_ratio must be positive"),
        ({"temperature": float("inf")}, "all finite"),
    ],
)
def test_degenerate_sizes_are_refused_with_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: dict[str, Any], message: str
) -> None:
    """Broken promise: a zero or negative grid, a patch larger than the image, NaN ratios or too many sequences
    were accepted (or refused only by an unrelated message, e.g. "must be a multiple of patch_size")."""
    folder = _hostile_config(tmp_path, monkeypatch, sizes)
    with pytest.raises(ValueError, match=rf"(?s)config\.json: not a UMBIF model config .*{message}"):
        load_encoder(folder)


# ----------------------------------------------------------------------------------------------- strict JSON


def test_synth_never_writes_nan_into_its_card(tmp_path: Path) -> None:
    """Broken promise: `umbif synth --exams 5` (two labelled patients) wrote "oracle_auc": {"idh": NaN, ...}
    (the AUC of a task with one class is undefined), which is not JSON, and `evaluate` then died at its end."""
    result = CliRunner().invoke(app, ["synth", "--exams", "5", "--out", str(tmp_path / "synth")])
    assert result.exit_code == 0, result.output
    card = strict_json((tmp_path / "synth" / "cohort_card.json").read_text())
    assert card["oracle_auc"]["idh"] is None and card["oracle_auc"]["codeletion_1p19q"] is None
    assert card["oracle_auc"]["mgmt"] == 1.0
    assert "| idh | undefined (one class) |" in (tmp_path / "synth" / "cohort_card.md").read_text()
    assert synthetic_oracle(tmp_path / "synth" / "manifest.csv") == {"mgmt": 1.0, "outcome": 1.0}


class _Fixed:
    """Scores every test sample 0.5: enough to reach the end of an evaluation."""

    name, description = "fixed", "constant 0.5"

    def fit_predict(self, train: dict, test: dict) -> dict:
        return {task: (np.full(len(table), 0.5), 0.5) for task, table in test.items()}


def test_evaluate_copes_with_an_undefined_oracle_auc(tmp_path: Path) -> None:
    """Broken promise: an oracle AUC that is NaN (a card from today's synth) or null made `evaluate` fail after all
    the work, at writing metrics.json; now undefined oracle values are left out of the metrics."""
    cohort = build(tmp_path / "cohort", patients=16, sites=2)
    card = {"oracle_auc": {"idh": math.nan, "mgmt": None, "outcome": 0.81}}
    (cohort.manifest_path.parent / "cohort_card.json").write_text(json.dumps(card))  # NaN as json.dumps writes it
    config = EvaluateConfig(tasks=("idh", "mgmt"), folds=2, loso=False, n_bootstrap=20, min_per_class=2)
    spec = MethodSpec("fixed", lambda ctx: _Fixed())
    document = run_evaluation(
        cohort.manifest.table, cohort.cache, tmp_path / "run", [spec], config, manifest_path=cohort.manifest_path
    )
    assert document["oracle_auc"] == {"outcome": 0.81}
    assert strict_json((tmp_path / "run" / "metrics.json").read_text())["oracle_auc"] == {"outcome": 0.81}
    strict_json((tmp_path / "run" / "report" / "report.json").read_text())


def test_checkpoint_state_is_strict_json_and_still_round_trips_infinity(tmp_path: Path) -> None:
    """Broken promise: state.json held the non-standard literal Infinity (ReduceLROnPlateau's best)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    folder = save_checkpoint(tmp_path, 1, model, optimizer, plateau, extra={"best_auc": -math.inf})
    strict_json((folder / "state.json").read_text())
    fresh_optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fresh = torch.optim.lr_scheduler.ReduceLROnPlateau(fresh_optimizer)
    state = load_checkpoint(tmp_path, model, fresh_optimizer, fresh)
    assert fresh.best == math.inf and state["extra"] == {"best_auc": -math.inf}


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path) -> None:
    """Broken promise: a checkpoint whose model.safetensors held NaN loaded silently (export then wrote it)."""
    model = torch.nn.Linear(2, 2)
    folder = save_checkpoint(tmp_path, 1, model)
    tensors = load_file(folder / "model.safetensors")
    tensors["weight"][0, 0] = math.nan
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensors \['weight'\] hold NaN"):
        load_checkpoint(tmp_path, torch.nn.Linear(2, 2))
