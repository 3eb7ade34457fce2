"""`umbif predict`: probabilities equal the training path (ingest -> cache -> encoder -> head), pair
tasks need a baseline, occlusion maps equal a brute-force loop, bad exams give errors naming the file,
and on the real UPENN-GBM exam the map lies in the brain."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.special import expit
from typer.testing import CliRunner

from conftest import AFFINES, brain_phantom, save_nifti
from umbif.adapt.classifier import (
    HEADS_FILE,
    SavedLinearHead,
    SavedTaskHead,
    load_classifier,
    pair_array,
    save_classifier,
)
from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.data.cache import run_preprocess
from umbif.data.datasets import CacheDataset
from umbif.data.io import ImageError
from umbif.data.manifest import Exam
from umbif.data.preprocess import preprocess_exam
from umbif.data.sources.folder import ingest_folder
from umbif.models.io import load_encoder
from umbif.models.umbif import ModelConfig, UMBIFEncoder
from umbif.predict import find_exam, occlusion_maps, predict_exam, prepare_exam, voxel_map

CONFIG = ModelConfig(image_size=(32, 32, 32), patch_size=8, dim=48, depth=2, heads=3)
PREPROCESS = PreprocessConfig(shape=(32, 32, 32))
EXAMS = {"e1": ("t1", "t1c", "t2", "flair"), "base": ("t1", "t1c", "t2", "flair"), "partial": ("t1", "flair")}


def _head(features: int, seed: int, inputs: str, threshold: float, positive: str, negative: str) -> SavedTaskHead:
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=features) / np.sqrt(features)  # logits of order 1: probabilities far from 0 and 1
    head = SavedLinearHead(weight, 0.2, rng.normal(0, 0.1, features), rng.uniform(0.5, 1.5, features))
    return SavedTaskHead(head, inputs, threshold, positive, negative, n_train=30, threshold_rule="youden")  # type: ignore[arg-type]


def _save(folder: Path, config: ModelConfig, preprocess: PreprocessConfig, dim: int) -> Path:
    torch.manual_seed(0)
    heads = {
        "idh": _head(dim, 1, "exam", 1.0, "mutant", "wildtype"),  # threshold 1: always the negative class
        "mgmt": _head(dim, 2, "exam", 0.0, "methylated", "unmethylated"),  # threshold 0: always positive
        "outcome": _head(3 * dim, 3, "pair", 0.5, "progression", "treatment_effect"),
    }
    return save_classifier(folder, UMBIFEncoder(config), config, heads, preprocess, preprocess.shape, "probe")


def _write_exam(folder: Path, sequences: tuple[str, ...], seed: int, affines: dict[str, np.ndarray] | None = None):
    base = brain_phantom((40, 40, 40), seed)
    for k, sequence in enumerate(sequences):
        affine = (affines or {}).get(sequence, AFFINES["ras"])
        save_nifti(folder / f"{folder.name}_{sequence}.nii.gz", base * (k + 1) + k * 5, affine)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny random classifier, three exams, and the reference: each exam through the training path."""
    root = tmp_path_factory.mktemp("predict")
    model = _save(root / "classifier", CONFIG, PREPROCESS, CONFIG.dim)
    for seed, (name, sequences) in enumerate(EXAMS.items()):
        _write_exam(root / "data" / name, sequences, seed)
    manifest = ingest_folder(root / "data").manifest
    assert run_preprocess(manifest, root / "cache", PREPROCESS).ok
    encoder = load_encoder(model)  # the stored encoder, loaded on its own
    reference = {}
    for item in CacheDataset(root / "cache"):
        with torch.no_grad():
            reference[item["exam_id"]] = encoder(item["image"][None].float(), item["present"][None]).numpy()
    return {"model": model, "data": root / "data", "reference": reference, "heads": load_file(model / HEADS_FILE)}


def _expected(setup: dict, task: str, features: np.ndarray) -> float:
    """The schema's score, written out: sigmoid(((x - mean) / scale) @ weight + bias) on the stored tensors."""
    t = {k: setup["heads"][f"{task}.{k}"].double().numpy() for k in ("weight", "bias", "mean", "scale")}
    return float(expit(((features[0] - t["mean"]) / t["scale"]) @ t["weight"] + t["bias"][0]))


def test_probabilities_equal_the_training_path(setup: dict, tmp_path: Path) -> None:
    result = predict_exam(setup["model"], setup["data"] / "e1", out_dir=tmp_path)
    tasks = result["tasks"]
    for task in ("idh", "mgmt"):
        assert tasks[task]["probability"] == pytest.approx(_expected(setup, task, setup["reference"]["e1"]), abs=1e-6)
        assert 0.02 < tasks[task]["probability"] < 0.98
    assert tasks["idh"]["threshold"] == 1.0 and tasks["idh"]["decision"] is False
    assert tasks["idh"]["label"] == "wildtype"
    assert tasks["mgmt"]["decision"] is True and tasks["mgmt"]["label"] == "methylated"
    assert tasks["outcome"]["status"] == "not run" and "--baseline" in tasks["outcome"]["reason"]
    assert "probability" not in tasks["outcome"]
    assert result["exam"] == "e1" and result["baseline"] is None
    assert result["sequences"] == ["t1", "t1c", "t2", "flair"] and result["missing_sequences"] == []
    assert json.loads((tmp_path / "prediction.json").read_text()) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "overlay_idh.png",
        "overlay_mgmt.png",
        "prediction.json",
        "saliency_idh.nii.gz",
        "saliency_mgmt.nii.gz",
    ]
    # no file name of the exam leaks into the outputs
    assert "e1_t1" not in (tmp_path / "prediction.json").read_text()
    png = matplotlib.image.imread(tmp_path / "overlay_idh.png")[..., :3]
    assert png.std() > 0.05  # not blank
    assert (np.abs(png[..., 0] - png[..., 2]) > 0.2).mean() > 0.01  # coloured heatmap pixels, not grey only


def test_pair_task_uses_the_baseline(setup: dict) -> None:
    result = predict_exam(setup["model"], setup["data"] / "e1", baseline=setup["data"] / "base", saliency=False)
    ref = setup["reference"]
    expected = _expected(setup, "outcome", pair_array(ref["base"], ref["e1"]))
    assert result["tasks"]["outcome"]["probability"] == pytest.approx(expected, abs=1e-6)
    assert result["tasks"]["outcome"]["label"] == ("progression" if expected >= 0.5 else "treatment_effect")
    # exam tasks still read the follow-up only
    assert result["tasks"]["idh"]["probability"] == pytest.approx(_expected(setup, "idh", ref["e1"]), abs=1e-6)
    assert result["baseline"]["exam"] == "base" and result["saliency"] is None


def test_missing_sequences_predict_with_the_present_ones(setup: dict) -> None:
    result = predict_exam(setup["model"], setup["data"] / "partial", saliency=False)
    assert result["sequences"] == ["t1", "flair"] and result["missing_sequences"] == ["t1c", "t2"]
    expected = _expected(setup, "mgmt", setup["reference"]["partial"])
    assert result["tasks"]["mgmt"]["probability"] == pytest.approx(expected, abs=1e-6)


def test_files_of_one_exam_equal_its_folder(setup: dict) -> None:
    files = sorted((setup["data"] / "e1").iterdir())
    by_files = predict_exam(setup["model"], files, saliency=False, label="anon-1")
    by_folder = predict_exam(setup["model"], setup["data"] / "e1", saliency=False)
    assert by_files["exam"] == "anon-1"
    assert by_files["tasks"]["idh"]["probability"] == by_folder["tasks"]["idh"]["probability"]


def test_occlusion_maps_equal_a_brute_force_loop(setup: dict) -> None:
    clf = load_classifier(setup["model"])
    exam = prepare_exam(clf, find_exam(setup["data"] / "e1"))
    baseline = setup["reference"]["base"]
    maps = occlusion_maps(clf, exam, ["idh", "outcome"], baseline=baseline, batch_size=5)
    p = CONFIG.patch_size
    assert maps["idh"].shape == CONFIG.grid
    strongest = np.unravel_index(np.abs(maps["idh"]).argmax(), CONFIG.grid)
    for cell in (strongest, (1, 2, 1), (0, 0, 0)):
        image = exam.image.clone()
        block = tuple(slice(c * p, (c + 1) * p) for c in cell)
        image[(slice(None), *block)] = 0.0
        with torch.no_grad():
            hidden = clf.encoder(image[None], exam.present[None]).numpy()
            full = clf.encoder(exam.image[None], exam.present[None]).numpy()
        for task, features in (("idh", lambda x: x), ("outcome", lambda x: pair_array(baseline, x))):
            drop = _logit(setup, task, features(full)) - _logit(setup, task, features(hidden))
            assert maps[task][cell] == pytest.approx(drop, abs=1e-4), (task, cell)
    assert maps["idh"][0, 0, 0] == 0.0  # a corner patch of background: nothing to hide, exactly 0
    assert np.count_nonzero(maps["idh"]) > 20
    # on the voxel grid: each voxel of the region carries its patch's value, 0 outside
    volume = voxel_map(maps["idh"], p, exam.brain)
    x, y, z = np.argwhere(exam.brain)[0]
    assert volume[x, y, z] == pytest.approx(maps["idh"][x // p, y // p, z // p])
    assert not volume[~exam.brain].any()


def _logit(setup: dict, task: str, features: np.ndarray) -> float:
    t = {k: setup["heads"][f"{task}.{k}"].double().numpy() for k in ("weight", "bias", "mean", "scale")}
    return float(((features[0] - t["mean"]) / t["scale"]) @ t["weight"] + t["bias"][0])


def _folder(tmp_path: Path, files: dict[str, np.ndarray | bytes]) -> Path:
    folder = tmp_path / "exam"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            save_nifti(folder / name, content, AFFINES["ras"])
    return folder


_BRAIN = brain_phantom((40, 40, 40))
_FAR = AFFINES["ras"].copy()
_FAR[:3, 3] += 1000.0  # 1 m away: no overlap with the other sequences


@pytest.mark.parametrize(
    ("files", "error", "match"),
    [
        ({}, ValueError, r"exam: no NIfTI file \(\.nii, \.nii\.gz\) in this folder"),
        ({"a_t1.nii.gz": _BRAIN, "a_notes.nii.gz": _BRAIN}, ValueError, r"a_notes\.nii\.gz: no sequence recognised"),
        ({"a_t1.nii.gz": _BRAIN, "a_t1w.nii.gz": _BRAIN}, ValueError, r"t1: several files match \(a_t1\.nii\.gz"),
        ({"a_seg.nii.gz": _BRAIN}, ValueError, "only masks, no image sequence"),
        (
            {"a_t1.nii.gz": _BRAIN, "a_flair.nii.gz": b"\x1f\x8bnot a nifti"},
            ImageError,
            r"a_flair\.nii\.gz: not a readable NIfTI",
        ),
    ],
)
def test_bad_exams_give_errors_naming_the_file(
    setup: dict, tmp_path: Path, files: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        predict_exam(setup["model"], _folder(tmp_path, files), saliency=False)


def test_sequences_that_do_not_overlap_are_refused(setup: dict, tmp_path: Path) -> None:
    folder = _write_exam(tmp_path / "far", ("t1", "flair"), 0, {"flair": _FAR})
    with pytest.raises(ImageError, match=r"far_flair\.nii\.gz: covers only 0% of the field of view"):
        predict_exam(setup["model"], folder, saliency=False)


def test_a_sequence_the_encoder_cannot_take(tmp_path: Path, setup: dict) -> None:
    config = CONFIG.model_validate({**CONFIG.to_dict(), "num_sequences": 2})  # knows t1 and t1c only
    model = _save(tmp_path / "clf2", config, PREPROCESS, config.dim)
    with pytest.raises(ValueError, match=r"e1_flair\.nii\.gz.*the encoder takes only t1, t1c \(num_sequences=2\)"):
        predict_exam(model, setup["data"] / "e1", saliency=False)


def test_missing_classifier_folder(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such classifier folder"):
        predict_exam(tmp_path / "nothing", setup["data"] / "e1")


def _cli(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_cli_predicts_every_exam_and_reports_failures(setup: dict, tmp_path: Path) -> None:
    data, out = setup["data"], tmp_path / "out"
    exams = (data / "e1", data / "partial", tmp_path / "gone")
    result = _cli("predict", "--model", setup["model"], *exams, "--out", out, "--no-saliency")
    assert result.exit_code == 1
    assert "1 of 3 exams failed" in result.output and "gone: no such exam folder or file" in result.output
    saved = json.loads((out / "e1" / "prediction.json").read_text())
    assert f"{saved['tasks']['idh']['probability']:.3f}" in result.output
    assert (out / "partial" / "prediction.json").is_file() and not list(out.glob("*/*.png"))
    assert "not run" in result.output and "--baseline" in result.output


def test_cli_with_baseline_draws_overlays(setup: dict, tmp_path: Path) -> None:
    data = setup["data"]
    result = _cli("predict", "--model", setup["model"], data / "e1", "--baseline", data / "base", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "e1" / "prediction.json").read_text())
    assert saved["tasks"]["outcome"]["status"] == "done" and saved["baseline"]["exam"] == "base"
    assert saved["tasks"]["outcome"]["label"] in result.output
    for task in ("idh", "mgmt", "outcome"):
        assert f"{task}: {tmp_path / 'e1' / f'overlay_{task}.png'}" in result.output
        assert (tmp_path / "e1" / f"overlay_{task}.png").is_file()


def test_cli_help_and_bad_model(setup: dict, tmp_path: Path) -> None:
    assert all(w in _cli("predict", "--help").output for w in ("--baseline", "--no-saliency", "--model"))
    result = _cli("predict", "--model", tmp_path / "nothing", setup["data"] / "e1")
    assert result.exit_code == 1 and "no such classifier folder" in result.output


def test_real_exam_map_lies_in_the_brain(upenn_sample: Path, tmp_path: Path) -> None:
    """The real UPENN-GBM exam at the default preprocessing (2 mm, 96^3) with a tiny random classifier."""
    preprocess = PreprocessConfig()
    config = ModelConfig(patch_size=16, dim=48, depth=2, heads=3)
    model = _save(tmp_path / "clf", config, preprocess, config.dim)
    result = predict_exam(model, upenn_sample, out_dir=tmp_path / "out")
    assert result["sequences"] == ["t1", "t1c", "t2", "flair"]
    assert result["saliency"]["occluded_patches"] < 216  # background patches are not run
    # the brain mask and grid of the exam, preprocessed on their own
    files = {
        s: upenn_sample / f"00001_{n}.nii.gz" for s, n in zip(EXAMS["e1"], ("t1n", "t1c", "t2w", "t2f"), strict=True)
    }
    exam = Exam("x", "x", "", None, files, None, None, {})
    reference = preprocess_exam(exam, preprocess)
    brain = reference.masks[0].astype(bool)
    image = nib.load(tmp_path / "out" / "saliency_idh.nii.gz")
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4)
    saliency = np.abs(np.asarray(image.dataobj))
    assert saliency[brain].sum() / saliency.sum() > 0.9
    assert np.count_nonzero(saliency[brain]) > 0.9 * brain.sum()  # the map covers the brain, not a few patches
    png = matplotlib.image.imread(tmp_path / "out" / "overlay_idh.png")[..., :3]
    assert png.std() > 0.05 and (np.abs(png[..., 0] - png[..., 2]) > 0.2).mean() > 0.01
