"""CNN baselines on the tiny labelled cohort (32^3): config checks, both MONAI networks forward/backward on the
cache grid and downsampled, absent sequences as zero channels, pair heads on shared-weight features, learning
the planted signal through run_method on saved splits, thresholds from the training patients only (against a
recomputation of the inner split), seeded determinism, and no export of a CNN as a UMBIF classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from labelled_cohort import TinyCohort, build
from umbif.adapt.finetune import save_finetuned
from umbif.baselines.cnn import CNNConfig, CNNEncoder, CNNMethod, build_cnn, train_cnn
from umbif.data.samples import build_items, labelled_samples
from umbif.eval.evaluate import run_method
from umbif.eval.splits import load_splits, make_splits, patient_strata, save_splits
from umbif.metrics import choose_threshold
from umbif.models.heads import pair_features
from umbif.train.supervised import inner_split, predict

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cnn.yaml"
GRID = (32, 32, 32)
# small and fast on the CPU: a quarter-width ResNet18 on the grid downsampled to 16^3
FAST = {"width": 0.25, "input_size": 16, "amp": "off", "lr": 3e-3}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: small convolutions gain little from two, and shared busy cores make a second one slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> TinyCohort:
    return build(tmp_path_factory.mktemp("cnn"), patients=36, sites=3)  # P009 (site0) lacks T1


@pytest.fixture(scope="module")
def samples(cohort: TinyCohort) -> dict[str, pd.DataFrame]:
    return {task: labelled_samples(cohort.manifest.table, task).table for task in ("idh", "outcome")}


def _split(samples: dict[str, pd.DataFrame], test_patients: set[str]):
    train = {t: df[~df["patient_id"].isin(test_patients)].reset_index(drop=True) for t, df in samples.items()}
    test = {t: df[df["patient_id"].isin(test_patients)].reset_index(drop=True) for t, df in samples.items()}
    return train, test


def _config(**overrides) -> CNNConfig:
    return CNNConfig.model_validate(FAST | overrides)


# ------------------------------------------------------------------------------------------- config and networks


def test_yaml_holds_the_defaults() -> None:
    assert CNNConfig.from_yaml(CONFIG) == CNNConfig()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"architecture": "densenet121", "input_size": 24}, "at least 29"),
        ({"architecture": "resnet18", "input_size": (16, 16, 4)}, "at least 8"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"width": 0}, "width must be in"),
        ({"architecture": "vgg"}, "architecture"),
    ],
)
def test_bad_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CNNConfig.model_validate(settings)


def test_input_shape_is_the_cache_grid_unless_resampled() -> None:
    assert CNNConfig().input_shape((64, 64, 48)) == (64, 64, 48)
    assert CNNConfig(input_size=32).input_shape((64, 64, 48)) == (32, 32, 32)
    with pytest.raises(ValueError, match="densenet121 needs an input of at least 29"):
        CNNConfig(architecture="densenet121").input_shape((24, 24, 24))  # a cache grid too small for it


@pytest.mark.parametrize(
    ("architecture", "grid", "input_size", "features"),
    [
        ("resnet18", 32, None, 512),
        ("resnet18", 32, 16, 512),
        ("densenet121", 32, None, 1024),
        ("densenet121", 40, 32, 1024),
    ],
)
def test_networks_train_on_the_grid_and_downsampled(
    architecture: str, grid: int, input_size: int | None, features: int
) -> None:
    torch.manual_seed(0)
    config = CNNConfig(architecture=architecture, input_size=input_size)
    model = build_cnn(("idh", "mgmt"), (grid,) * 3, config)
    encoder = model.encoder
    assert isinstance(encoder, CNNEncoder) and encoder.dim == features
    seen = []
    first_conv = next(m for m in encoder.net.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    images, present = torch.randn(2, 4, grid, grid, grid), torch.ones(2, 4, dtype=torch.bool)
    logits = model(images, present)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert tuple(seen[0][1:]) == (4, *config.input_shape((grid,) * 3))  # what the network sees
    logits.sum().backward()
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert model.heads["mgmt"].classifier.fc.weight.grad.abs().sum() > 0


def test_absent_sequences_are_zero_channels() -> None:
    torch.manual_seed(0)
    encoder = CNNEncoder("resnet18", GRID, width=0.25).eval()
    seen = []
    encoder.net.conv1.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    images = torch.randn(2, 4, *GRID)
    present = torch.tensor([[True, False, True, True], [True, True, True, False]])
    with torch.no_grad():
        out = encoder(images, present)
        noisy = images.clone()
        noisy[0, 1], noisy[1, 3] = 1e3, torch.randn(GRID) * 50  # anything in an absent channel
        again = encoder(noisy, present)
    assert torch.equal(seen[0][0, 1], torch.zeros(GRID)) and torch.equal(seen[0][1, 3], torch.zeros(GRID))
    assert torch.equal(seen[0][0, 0], images[0, 0])  # present channels pass unchanged
    assert torch.equal(out, again)


def test_pair_heads_see_baseline_followup_and_change_from_shared_weights() -> None:
    torch.manual_seed(0)
    model = build_cnn(("idh", "outcome"), GRID, _config()).eval()
    images, present = torch.randn(3, 4, *GRID), torch.ones(3, 4, dtype=torch.bool)
    baseline = torch.randn(1, 4, *GRID)
    paired = torch.tensor([False, True, False])
    with torch.no_grad():
        logits = model(images, present, paired, baseline, present[:1])
        f, b = model.encoder(images, present), model.encoder(baseline, present[:1])  # one encoder for both
        idh = model.heads["idh"].classifier.fc
        outcome = model.heads["outcome"].classifier.fc
    assert outcome.in_features == 3 * model.encoder.dim
    torch.testing.assert_close(logits[:, 0], (f @ idh.weight.T + idh.bias)[:, 0])
    expected = pair_features(b, f[1:2]) @ outcome.weight.T + outcome.bias
    torch.testing.assert_close(logits[1, 1], expected[0, 0])
    assert logits[0, 1] == 0 and logits[2, 1] == 0  # not pairs: the outcome column is unused
    with pytest.raises(ValueError, match="1 items are marked paired but 0 baselines"):
        model(images, present, paired)


# ------------------------------------------------------------------------------------------- training


def test_learns_the_planted_signal_through_run_method_on_saved_splits(
    cohort: TinyCohort, samples: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    idh = {"idh": samples["idh"]}  # IDH-mutant lesions are 4x brighter on T2
    save_splits(make_splits(patient_strata(idh, folds=3), folds=3, seed=0, loso=False), tmp_path / "splits.json")
    method = CNNMethod(cohort.cache, _config(epochs=20, patience=20))  # from scratch on 24 patients: slow to learn
    assert method.name == "cnn-resnet18" and "ResNet18" in method.description and "16^3" in method.description
    predictions = run_method(method, idh, load_splits(tmp_path / "splits.json"), tmp_path, ("kfold",), method.settings)
    assert len(predictions) == len(samples["idh"]) and set(predictions["fold"]) == {0, 1, 2}
    assert roc_auc_score(predictions["y"], predictions["score"]) >= 0.85
    assert (predictions.groupby("fold")["threshold"].nunique() == 1).all()  # one threshold per fold and task
    assert (tmp_path / "predictions" / "cnn-resnet18.csv").is_file()


@pytest.fixture(scope="module")
def fold(samples: dict[str, pd.DataFrame]):
    return _split(samples, {"P000", "P004", "P009", "P013", "P020", "P031"})


def test_thresholds_seeded_determinism_and_blindness_to_test_labels(cohort: TinyCohort, fold) -> None:
    train, test = fold
    method = CNNMethod(cohort.cache, _config(epochs=1))
    first = method.fit_predict(train, test)
    flipped = {t: df.assign(y=1 - df["y"]).iloc[::-1].reset_index(drop=True) for t, df in test.items()}
    second = method.fit_predict(train, flipped)
    for task in train:
        scores, threshold = first[task]
        assert scores.shape == (len(test[task]),) and ((scores > 0) & (scores < 1)).all()
        # same seed, same model: the same scores in the test rows' order (to float32 rounding: other batches
        # sum the convolutions in another order) and the very same threshold (the test labels play no part)
        np.testing.assert_allclose(second[task][0], scores[::-1], rtol=1e-6)
        assert second[task][1] == threshold
    other = CNNMethod(cohort.cache, _config(epochs=1, seed=1)).fit_predict(train, test)
    assert np.abs(other["idh"][0] - first["idh"][0]).max() > 1e-3


def test_threshold_is_youden_on_the_inner_validation_patients(cohort: TinyCohort, fold) -> None:
    train, test = fold
    config = _config(epochs=2)
    result = train_cnn(cohort.cache, train, config, exclude_patients=sorted(set(test["idh"]["patient_id"])))
    assert result.model_config is None and result.n_train == {"idh": 30, "outcome": 30}
    assert [r["epoch"] for r in result.history] == [1, 2]

    # the inner split rebuilt from the training tables: each item stratified by its first labelled task
    items = build_items(train, ("idh", "outcome"))
    strata = [
        next(f"{t}={int(y)}" for t, y in zip(items.tasks, row, strict=True) if not np.isnan(y)) for row in items.labels
    ]
    val_items = inner_split(items.patient_ids, strata, config.val_fraction, config.seed)
    for task, table in train.items():
        val = val_items[items.rows[task]]
        assert not set(table["patient_id"][val]) & set(test[task]["patient_id"])
        assert result.threshold_rules[task].startswith("youden on the inner validation")
        scores = predict(result, cohort.cache, {task: table[val]})[task]
        expected = choose_threshold(table["y"][val].to_numpy(), scores, rule="youden")
        assert result.thresholds[task] == pytest.approx(expected, rel=1e-6)  # scored in other batches here
    with pytest.raises(ValueError, match="only a fine-tuned UMBIF encoder"):
        save_finetuned(result, cohort.cache.parent / "cnn-model")
    assert not (cohort.cache.parent / "cnn-model").exists()
