"""The classifier folder: save -> load gives the same scores; damaged folders give errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.special import expit

from umbif.adapt.classifier import (
    CARD_FILE,
    HEADS_FILE,
    SavedLinearHead,
    SavedTaskHead,
    load_classifier,
    pair_array,
    save_classifier,
)
from umbif.config import PreprocessConfig
from umbif.models.umbif import ModelConfig, UMBIFEncoder

CONFIG = ModelConfig(image_size=(32, 32, 32), patch_size=8, dim=48, depth=2, heads=3)
PREPROCESS = PreprocessConfig(shape=(32, 32, 32))


def random_head(features: int, seed: int, inputs: str = "exam", threshold: float = 0.4) -> SavedTaskHead:
    rng = np.random.default_rng(seed)
    head = SavedLinearHead(
        rng.normal(size=features), rng.normal(), rng.normal(size=features), rng.uniform(0.5, 2, features)
    )
    return SavedTaskHead(head, inputs, threshold, "mutant", "wildtype", n_train=40, threshold_rule="youden")  # type: ignore[arg-type]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, UMBIFEncoder, dict[str, SavedTaskHead]]:
    torch.manual_seed(0)
    encoder = UMBIFEncoder(CONFIG).eval()
    heads = {"idh": random_head(48, 1), "outcome": random_head(3 * 48, 2, "pair", 0.6)}
    folder = save_classifier(tmp_path / "clf", encoder, CONFIG, heads, PREPROCESS, (32, 32, 32), "probe")
    return folder, encoder, heads


def test_linear_head_matches_a_brute_force_loop() -> None:
    head = random_head(5, 3).head
    x = np.random.default_rng(4).normal(size=(7, 5))
    expected = [
        1
        / (1 + np.exp(-(sum((x[n, f] - head.mean[f]) / head.scale[f] * head.weight[f] for f in range(5)) + head.bias)))
        for n in range(7)
    ]
    np.testing.assert_allclose(head.score(x), expected, rtol=1e-10)


def test_pair_features_are_baseline_followup_and_change() -> None:
    b, f = np.arange(6.0).reshape(2, 3), np.arange(6.0, 12.0).reshape(2, 3)
    out = pair_array(b, f)
    assert out.shape == (2, 9)
    np.testing.assert_array_equal(out[:, :3], b)
    np.testing.assert_array_equal(out[:, 3:6], f)
    np.testing.assert_array_equal(out[:, 6:], f - b)
    with pytest.raises(ValueError, match=r"\[N, E\]"):
        pair_array(b, f[:, :2])


def test_round_trip_gives_the_same_scores(saved: tuple[Path, UMBIFEncoder, dict[str, SavedTaskHead]]) -> None:
    folder, encoder, heads = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["encoder.safetensors", "config.json", HEADS_FILE, CARD_FILE]
    )
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["format"] == "umbif-classifier" and card["version"] == 1 and card["method"] == "probe"
    assert card["embedding"] == {"image_size": [32, 32, 32], "pool": "cls"}
    assert card["tasks"]["outcome"] == {
        "kind": "linear",
        "inputs": "pair",
        "features": 144,
        "threshold": 0.6,
        "positive": "mutant",
        "negative": "wildtype",
        "n_train": 40,
        "threshold_rule": "youden",
    }
    tensors = load_file(folder / HEADS_FILE)
    assert {k: list(v.shape) for k, v in tensors.items() if k.startswith("idh.")} == {
        "idh.weight": [48],
        "idh.bias": [1],
        "idh.mean": [48],
        "idh.scale": [48],
    }
    assert all(v.dtype == torch.float32 for v in tensors.values())

    loaded = load_classifier(folder)
    assert loaded.image_size == (32, 32, 32) and loaded.preprocess == PREPROCESS and loaded.method == "probe"
    assert not loaded.encoder.training
    images = torch.randn(3, 4, 32, 32, 32)
    present = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 1], [0, 1, 0, 0]]).bool()
    with torch.no_grad():
        before = encoder(images, present).numpy()
    after = loaded.embed(images, present)
    np.testing.assert_array_equal(before, after)
    for task, head in heads.items():
        x = after if head.inputs == "exam" else pair_array(after, after[::-1])
        np.testing.assert_array_equal(loaded.heads[task].head.score(x), head.head.score(x))
        assert loaded.heads[task].threshold == head.threshold and loaded.heads[task].inputs == head.inputs
    # the score is the schema's formula on the stored float32 tensors
    idh = tensors
    z = (after - idh["idh.mean"].numpy()) / idh["idh.scale"].numpy()
    expected = expit(z.astype(np.float64) @ idh["idh.weight"].numpy().astype(np.float64) + float(idh["idh.bias"]))
    np.testing.assert_allclose(loaded.heads["idh"].head.score(after), expected, rtol=1e-6)


def _damage_tensor(folder: Path, key: str, value: torch.Tensor | None) -> None:
    tensors = load_file(folder / HEADS_FILE)
    if value is None:
        del tensors[key]
    else:
        tensors[key] = value
    save_file(tensors, folder / HEADS_FILE)


def _edit_card(folder: Path, edit) -> None:
    card = json.loads((folder / CARD_FILE).read_text())
    edit(card)
    (folder / CARD_FILE).write_text(json.dumps(card))


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (
            lambda f: _damage_tensor(f, "idh.scale", None),
            ValueError,
            r"heads\.safetensors: tensor 'idh\.scale' is missing",
        ),
        (lambda f: _damage_tensor(f, "idh.weight", torch.zeros(47)), ValueError, r"'idh\.weight' has shape \[47\]"),
        (lambda f: _damage_tensor(f, "idh.scale", torch.zeros(48)), ValueError, r"heads\.safetensors: task idh: scale"),
        (
            lambda f: (f / CARD_FILE).write_text('{"format": "umbif-classifier", '),
            ValueError,
            r"classifier\.json: not valid JSON",
        ),
        (lambda f: _edit_card(f, lambda c: c.update(version=2)), ValueError, r"classifier\.json: format version 2"),
        (
            lambda f: _edit_card(f, lambda c: c.update(format="other")),
            ValueError,
            r"classifier\.json: not a classifier card",
        ),
        (
            lambda f: _edit_card(f, lambda c: c["tasks"]["idh"].update(threshold=1.5)),
            ValueError,
            r"classifier\.json: task idh: threshold 1\.5 must be a number in \[0, 1\]",
        ),
        (
            lambda f: _edit_card(f, lambda c: c["tasks"]["idh"].update(features=96)),
            ValueError,
            r"classifier\.json: task idh declares 96 features",
        ),
        (
            lambda f: _edit_card(f, lambda c: c["embedding"].update(image_size=[30, 32, 32])),
            ValueError,
            r"classifier\.json: embedding\.image_size",
        ),
        (lambda f: (f / HEADS_FILE).unlink(), FileNotFoundError, r"heads\.safetensors: missing"),
        (lambda f: (f / "encoder.safetensors").unlink(), FileNotFoundError, r"encoder\.safetensors: missing"),
        (lambda f: (f / "config.json").write_text("[1, 2"), ValueError, r"config\.json: not valid JSON"),
        (
            lambda f: (f / "config.json").write_text('{"model": {"dim": 7}}'),
            ValueError,
            r"config\.json: not a UMBIF model config",
        ),
        # a pickle in place of the heads file is never unpickled: it is not a readable safetensors file
        (
            lambda f: torch.save({"idh.weight": torch.zeros(48)}, f / HEADS_FILE),
            ValueError,
            r"heads\.safetensors: not a readable safetensors",
        ),
        (
            lambda f: (torch.save({"idh.weight": torch.zeros(48)}, f / "heads.pt"), (f / HEADS_FILE).unlink()),
            ValueError,
            r"\['heads\.pt'\] are pickle files",
        ),
    ],
)
def test_damaged_folders_give_errors_naming_the_file(
    saved: tuple[Path, UMBIFEncoder, dict[str, SavedTaskHead]], damage, error: type[Exception], match: str
) -> None:
    folder = saved[0]
    damage(folder)
    with pytest.raises(error, match=match):
        load_classifier(folder)


def test_missing_folder_and_pickle_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such classifier folder"):
        load_classifier(tmp_path / "nothing")
    with pytest.raises(ValueError, match="a pickle file"):
        load_classifier(tmp_path / "model.pt")


@pytest.mark.parametrize(
    ("heads", "kwargs", "match"),
    [
        ({"idh": random_head(47, 0)}, {}, "head has 47 features"),
        ({"outcome": random_head(48, 0, "pair")}, {}, "give 144"),
        ({"a.b": random_head(48, 0)}, {}, "no '.'"),
        ({"idh": random_head(48, 0)}, {"method": "magic"}, "method must be one of"),
        ({"idh": random_head(48, 0)}, {"image_size": (40, 40, 40)}, "differs from the preprocessing shape"),
        ({}, {}, "no task heads"),
    ],
)
def test_save_refuses_inconsistent_classifiers(tmp_path: Path, heads: dict, kwargs: dict, match: str) -> None:
    args = {"method": "probe", "image_size": (32, 32, 32)} | kwargs
    with pytest.raises(ValueError, match=match):
        save_classifier(tmp_path, UMBIFEncoder(CONFIG), CONFIG, heads, PREPROCESS, **args)
    assert not (tmp_path / CARD_FILE).exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": -0.1}, r"threshold must be in \[0, 1\]"),
        ({"inputs": "triple"}, "inputs must be one of"),
    ],
)
def test_task_head_checks_its_fields(kwargs: dict, match: str) -> None:
    args = {"inputs": "exam", "threshold": 0.5} | kwargs
    with pytest.raises(ValueError, match=match):
        SavedTaskHead(random_head(4, 0).head, positive="a", negative="b", n_train=1, threshold_rule="x", **args)


def test_linear_head_checks_its_sizes() -> None:
    with pytest.raises(ValueError, match="same length"):
        SavedLinearHead(np.ones(3), 0.0, np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match=r"features must be \[N, 3\]"):
        SavedLinearHead(np.ones(3), 0.0, np.zeros(3), np.ones(3)).logit(np.ones((2, 4)))
