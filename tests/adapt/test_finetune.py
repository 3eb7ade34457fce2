"""Fine-tuning on a tiny cached cohort (20 patients, a baseline and a follow-up exam each, 32^3):
items with masked labels, layer-wise learning rates, no gradient from missing labels, the inner split,
Youden thresholds against a brute-force loop, early stopping, frozen/partial modes, learning a visible
signal, determinism and blindness to test labels, the classifier-folder export and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from conftest import AFFINES, brain_phantom, save_nifti
from umbif import SEQUENCES
from umbif.adapt.classifier import load_classifier
from umbif.adapt.finetune import FinetuneConfig, build_model, finetune, finetune_and_predict, save_finetuned
from umbif.cli import app
from umbif.config import PreprocessConfig
from umbif.data.cache import run_preprocess
from umbif.data.datasets import CacheDataset
from umbif.data.manifest import Manifest
from umbif.data.samples import build_items, labelled_samples
from umbif.metrics import choose_threshold
from umbif.models.io import load_encoder, save_encoder
from umbif.models.umbif import ModelConfig, UMBIFEncoder
from umbif.train.losses import masked_bce
from umbif.train.supervised import TrainedModel, inner_split, param_groups, predict

N_PATIENTS = 20
GRID = (32, 32, 32)
MODEL = ModelConfig(image_size=GRID, patch_size=8, dim=48, depth=2, heads=2)
FAST = {"amp": "off", "batch_size": 4, "lr": 1e-3}  # float32 on the CPU: exact comparisons, faster there


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: the tiny model gains nothing from two, and on shared busy cores the spinning
    second thread made this file 2-6x slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(**overrides) -> FinetuneConfig:
    return FinetuneConfig.model_validate(FAST | overrides)


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in GRID), indexing="ij"))
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) < radius**2


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Patient i: IDH-mutant iff i is even (a bright blob in both exams), MGMT methylated iff i % 4 < 2,
    1p/19q codeleted iff i % 4 == 0 (recorded for mutants only), progression iff i % 3 == 0 (a second blob
    at follow-up). Cached on a 32^3 grid, with a random tiny encoder exported beside."""
    root = tmp_path_factory.mktemp("finetune")
    blob, growth = _ball((10, 16, 16), 4), _ball((21, 16, 14), 3)
    rows = []
    for i in range(N_PATIENTS):
        mutant, progression = i % 2 == 0, i % 3 == 0
        for t in (0, 1):
            exam = f"p{i:02d}-{t}"
            image = brain_phantom(GRID, seed=2 * i + t) + 800.0 * blob * mutant + 800.0 * growth * (t and progression)
            for s in SEQUENCES:
                save_nifti(root / "data" / exam / f"{s}.nii.gz", image * (SEQUENCES.index(s) + 1), AFFINES["ras"])
            genotype = {
                "idh": "mutant" if mutant else "wildtype",
                "mgmt": "methylated" if i % 4 < 2 else "unmethylated",
                "codeletion_1p19q": ("codeleted" if i % 4 == 0 else "intact") if mutant else "",
            }
            outcome = {"outcome": "progression" if progression else "treatment_effect"}
            rows.append(
                {"exam_id": exam, "patient_id": f"p{i:02d}", "site": f"s{i % 2}", "timepoint": str(t)}
                | {s: f"data/{exam}/{s}.nii.gz" for s in SEQUENCES}
                | (outcome if t else genotype)  # genotype at diagnosis (baseline), outcome at follow-up
            )
    manifest = Manifest(pd.DataFrame(rows), root=root)
    manifest.write(root / "manifest.csv")
    report = run_preprocess(manifest, root / "cache", PreprocessConfig(shape=GRID))
    assert report.ok, report.failures
    torch.manual_seed(0)
    save_encoder(UMBIFEncoder(MODEL), MODEL, root / "encoder")
    return root


def _tables(root: Path, tasks: tuple[str, ...] = ("idh", "mgmt", "codeletion_1p19q", "outcome")):
    table = Manifest.read(root / "manifest.csv").table
    return {task: labelled_samples(table, task).table for task in tasks}


def _split(tables: dict[str, pd.DataFrame], test_patients: set[str]):
    train = {t: df[~df["patient_id"].isin(test_patients)].reset_index(drop=True) for t, df in tables.items()}
    test = {t: df[df["patient_id"].isin(test_patients)].reset_index(drop=True) for t, df in tables.items()}
    return train, test


# ------------------------------------------------------------------------------------------- pieces


def test_training_samples_are_the_labelled_cached_samples_with_notes(cohort: Path) -> None:
    from umbif.adapt.finetune import training_samples
    from umbif.data.cache import Cache

    table = Manifest.read(cohort / "manifest.csv").table
    unlabelled = table.assign(idh="", mgmt="", codeletion_1p19q="")
    extra = table.iloc[[0]].assign(exam_id="not-cached")
    train, notes = training_samples(pd.concat([unlabelled, extra], ignore_index=True), Cache(cohort / "cache"))
    assert list(train) == ["outcome"] and len(train["outcome"]) == N_PATIENTS
    assert "1 exams of the manifest are not in the cache and are left out" in notes
    assert "no labelled samples for idh; it is left out" in notes
    with pytest.raises(ValueError, match="no labelled samples for task 'idh'"):
        training_samples(unlabelled, Cache(cohort / "cache"), tasks=("idh",))
    with pytest.raises(ValueError, match="no labelled samples for any task"):
        training_samples(unlabelled.assign(outcome=""), Cache(cohort / "cache"))


def test_items_merge_tasks_and_mask_missing_labels(cohort: Path) -> None:
    tables = _tables(cohort)
    items = build_items(tables, tuple(tables))
    assert len(items) == 2 * N_PATIENTS  # one baseline item (genotype) and one pair item (outcome) per patient
    for task, table in tables.items():
        t = items.tasks.index(task)
        picked = items.labels[items.rows[task], t]
        assert np.array_equal(picked, table["y"].to_numpy(dtype=np.float32))  # rows map to their items
        assert [items.exam_ids[i] for i in items.rows[task]] == list(table["exam_id"])
    pairs = [i for i, b in enumerate(items.baseline_ids) if b]
    assert len(pairs) == N_PATIENTS and all(items.baseline_ids[i] == items.exam_ids[i][:-1] + "0" for i in pairs)
    labelled = ~np.isnan(items.labels)
    assert not labelled[pairs][:, :3].any() and labelled[pairs][:, 3].all()  # a pair has only its outcome label
    wildtype = [i for i, b in enumerate(items.baseline_ids) if not b and items.labels[i, 0] == 0]
    assert np.isnan(items.labels[wildtype, 2]).all()  # 1p/19q exists only for IDH-mutant tumours


def test_items_refuse_conflicting_labels(cohort: Path) -> None:
    idh = _tables(cohort, ("idh",))["idh"]
    twice = pd.concat([idh, idh.iloc[:1].assign(y=1 - idh["y"].iloc[0])])
    with pytest.raises(ValueError, match="twice with different labels"):
        build_items({"idh": twice}, ("idh",))


def test_layer_wise_learning_rates_and_weight_decay() -> None:
    torch.manual_seed(0)
    lr, decay, wd = 1e-3, 0.5, 0.05
    model = build_model(UMBIFEncoder(MODEL), ("idh", "outcome"), _config(head="attention"))
    groups = param_groups(model, lr, decay, wd)
    seen = [name for group in groups for name in group["names"]]
    assert sorted(seen) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each exactly once
    depth = MODEL.depth
    for group in groups:
        for name, param in zip(group["names"], group["params"], strict=True):
            if name.startswith("encoder.blocks."):
                expected = lr * decay ** (depth - int(name.split(".")[2]))
            elif name.split(".")[1] in ("patch_embed", "seq_embed", "cls_token"):
                expected = lr * decay ** (depth + 1)  # the embeddings learn slowest
            else:
                expected = lr  # final norm and heads
            assert group["lr"] == pytest.approx(expected), name
            no_decay = param.ndim == 1 or name in ("encoder.cls_token", "encoder.seq_embed") or name.endswith("query")
            assert group["weight_decay"] == (0.0 if no_decay else wd), name
    assert sorted({g["lr"] for g in groups}) == pytest.approx([lr * decay**k for k in range(depth + 1, -1, -1)])


def test_partial_mode_groups_hold_only_the_last_blocks_and_heads() -> None:
    model = build_model(UMBIFEncoder(MODEL), ("idh",), _config(mode="partial", trainable_blocks=1))
    names = {name for group in param_groups(model, 1e-3, 0.75, 0.05) for name in group["names"]}
    assert names and all(n.startswith(("encoder.blocks.1.", "encoder.norm.", "heads.idh.")) for n in names)


def test_masked_bce_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=g)
    labels = torch.tensor([[1, 0, math.nan], [0, math.nan, math.nan], [1, 1, 1], [math.nan, 0, 1], [0, 0, 0]])
    pos_weight = torch.tensor([2.0, 1.0, 0.5])
    total = 0.0
    for i in range(5):
        for t in range(3):
            y = float(labels[i, t])
            if math.isnan(y):
                continue
            p = 1 / (1 + math.exp(-float(logits[i, t])))
            total += -(float(pos_weight[t]) * y * math.log(p) + (1 - y) * math.log(1 - p))
    assert float(masked_bce(logits, labels, pos_weight)) == pytest.approx(total / 5, rel=1e-5)


def test_missing_labels_give_no_gradient() -> None:
    torch.manual_seed(0)
    model = build_model(UMBIFEncoder(MODEL), ("idh", "mgmt", "outcome"), _config())
    images, present = torch.randn(3, 4, *GRID), torch.ones(3, 4, dtype=torch.bool)
    paired = torch.tensor([False, True, False])
    labels = torch.tensor([[1.0, math.nan, math.nan], [math.nan, math.nan, 0.0], [0.0, math.nan, math.nan]])
    masked_bce(model(images, present, paired, images[:1], present[:1]), labels).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.heads["mgmt"].parameters())  # no mgmt label
    assert all(p.grad is not None and p.grad.any() for p in model.heads["idh"].parameters())
    assert model.heads["outcome"].classifier.fc.weight.grad.any()
    model.zero_grad()
    labels[1, 2] = math.nan  # now no pair is labelled either
    masked_bce(model(images, present, paired, images[:1], present[:1]), labels).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.heads["outcome"].parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inner_split_holds_out_whole_patients_stratified(seed: int) -> None:
    rng = np.random.default_rng(seed)
    patients = [f"p{i}" for i in rng.integers(0, 30, size=60)]  # several items per patient
    strata = [f"idh={int(p[1:]) % 2}" for p in patients]
    val = inner_split(patients, strata, 0.2, seed)
    held, kept = (
        {p for p, v in zip(patients, val, strict=True) if v},
        {p for p, v in zip(patients, val, strict=True) if not v},
    )
    assert held and kept and not held & kept
    assert 0.1 <= len(held) / len(held | kept) <= 0.3
    assert {s for s, v in zip(strata, val, strict=True) if v} == {"idh=0", "idh=1"}
    assert np.array_equal(val, inner_split(patients, strata, 0.2, seed))


def test_inner_split_needs_two_patients() -> None:
    with pytest.raises(ValueError, match="1 patient"):
        inner_split(["a", "a"], ["x", "y"], 0.2, 0)


# ------------------------------------------------------------------------------------------- training


def test_early_stopping_stops_and_keeps_the_best_epoch(cohort: Path) -> None:
    tables = _tables(cohort, ("idh",))
    config = _config(lr=1e-9, epochs=10, patience=2, augment=None, mode="frozen")  # nothing improves after epoch 1
    result = finetune(cohort / "encoder", cohort / "cache", tables, config)
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and result.best_epoch == 1
    assert {"train_loss", "val_loss", "val_auc", "val_auc_idh", "lr"} <= set(result.history[0])


@pytest.mark.parametrize(("mode", "changed"), [("frozen", set()), ("partial", {"blocks.1", "norm"})])
def test_frozen_and_partial_modes_train_only_what_they_say(cohort: Path, mode: str, changed: set[str]) -> None:
    tables = _tables(cohort, ("idh",))
    config = _config(mode=mode, epochs=2, lr=1e-2, trainable_blocks=1, val_fraction=0.5, augment=None)
    result = finetune(cohort / "encoder", cohort / "cache", tables, config)
    assert result.history[1]["val_loss"] != result.history[0]["val_loss"]  # something trains (the heads at least)
    before = load_encoder(cohort / "encoder").state_dict()
    after = result.model.encoder.state_dict()
    moved = {
        ".".join(name.split(".")[:2]) if name.startswith("blocks") else name.split(".")[0]
        for name in before
        if not torch.equal(before[name], after[name])
    }
    assert moved == changed


def test_learns_a_visible_signal_and_keeps_the_best_weights(cohort: Path) -> None:
    tables = _tables(cohort, ("idh",))
    train, test = _split(tables, {"p00", "p01", "p02", "p03", "p04", "p05"})
    config = _config(epochs=6, patience=6, batch_size=2, lr=2e-3)
    result = finetune(cohort / "encoder", cohort / "cache", train, config)
    history = result.history
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[result.best_epoch - 1]["val_auc_idh"] >= 0.99
    scores = predict(result, cohort / "cache", test)["idh"]
    assert roc_auc_score(test["idh"]["y"], scores) == 1.0  # held-out patients, bright blob iff mutant
    # the Youden cut is the lowest validation positive's score: tight on 3 validation patients
    assert ((scores >= result.thresholds["idh"]) == test["idh"]["y"].astype(bool)).mean() >= 4 / 6

    # the inner validation rows, rebuilt: the model is the best epoch's and the threshold is theirs
    idh = train["idh"]
    val = inner_split(list(idh["patient_id"]), [f"idh={y}" for y in idh["y"]], config.val_fraction, config.seed)
    y_val, p_val = idh["y"][val].to_numpy(), predict(result, cohort / "cache", {"idh": idh[val]})["idh"]
    pos_weight = (idh["y"][~val] == 0).sum() / (idh["y"][~val] == 1).sum()
    loss = -(pos_weight * y_val * np.log(p_val) + (1 - y_val) * np.log(1 - p_val)).mean()
    assert loss == pytest.approx(history[result.best_epoch - 1]["val_loss"], rel=1e-4)
    assert result.thresholds["idh"] == choose_threshold(y_val, p_val, rule="youden")


def test_seeded_deterministic_aligned_and_blind_to_test_labels(cohort: Path) -> None:
    tables = _tables(cohort, ("idh", "codeletion_1p19q", "outcome"))
    train, test = _split(tables, {"p00", "p03", "p04", "p09"})
    config = _config(epochs=1)
    first = finetune_and_predict(cohort / "encoder", cohort / "cache", train, test, config)
    flipped = {t: df.assign(y=1 - df["y"]).iloc[::-1].reset_index(drop=True) for t, df in test.items()}
    second = finetune_and_predict(cohort / "encoder", cohort / "cache", train, flipped, config)
    for task in tables:
        scores, threshold = first[task]
        assert scores.shape == (len(test[task]),) and ((scores > 0) & (scores < 1)).all()
        assert np.array_equal(second[task][0], scores[::-1])  # same numbers, in the test table's row order
        assert second[task][1] == threshold  # chosen on training data only
    other = finetune_and_predict(cohort / "encoder", cohort / "cache", train, test, _config(epochs=1, seed=1))
    assert not np.array_equal(other["idh"][0], first["idh"][0])


def test_threshold_fallbacks_when_a_split_has_one_class(cohort: Path) -> None:
    tables = _tables(cohort, ("idh", "mgmt", "codeletion_1p19q"))
    tables["codeletion_1p19q"] = tables["codeletion_1p19q"].query("y == 1")  # one class only
    idh, mgmt = tables["idh"], tables["mgmt"].set_index("exam_id")["y"]
    strata = [f"idh={y}" for y in idh["y"]]  # the split stratifies on each item's first task
    seed = next(
        s
        for s in range(50)
        if mgmt[idh["exam_id"][inner_split(list(idh["patient_id"]), strata, 0.2, s)]].nunique() == 1
    )
    result = finetune(cohort / "encoder", cohort / "cache", tables, _config(epochs=1, seed=seed))
    assert result.threshold_rules["idh"].startswith("youden on the inner validation")
    assert result.threshold_rules["mgmt"].startswith("youden on the inner training")  # validation: one class
    assert 0 < result.thresholds["mgmt"] < 1
    assert result.thresholds["codeletion_1p19q"] == 0.5 and result.threshold_rules["codeletion_1p19q"].startswith("0.5")


def test_test_patients_never_train(cohort: Path) -> None:
    tables = _tables(cohort, ("idh", "outcome"))
    result = finetune(cohort / "encoder", cohort / "cache", tables, _config(epochs=1), exclude_patients=["p01", "p02"])
    assert result.n_train == {"idh": N_PATIENTS - 2, "outcome": N_PATIENTS - 2}
    assert result.excluded_patients == ["p01", "p02"]


# ------------------------------------------------------------------------------------------- export and CLI


def _linear_score(heads: dict[str, torch.Tensor], task: str, x: torch.Tensor) -> np.ndarray:
    z = ((x - heads[f"{task}.mean"]) / heads[f"{task}.scale"]) @ heads[f"{task}.weight"] + heads[f"{task}.bias"]
    return torch.sigmoid(z).numpy()


def test_export_writes_a_classifier_folder_that_scores_like_the_model(cohort: Path, tmp_path: Path) -> None:
    tables = _tables(cohort, ("idh", "outcome"))
    result = finetune(cohort / "encoder", cohort / "cache", tables, _config(epochs=2))
    save_finetuned(result, tmp_path / "model")
    card = json.loads((tmp_path / "model" / "classifier.json").read_text())
    assert card["format"] == "umbif-classifier" and card["version"] == 1 and card["method"] == "finetune"
    assert card["embedding"] == {"image_size": list(GRID), "pool": "cls"}
    assert card["preprocess"] == PreprocessConfig(shape=GRID).to_dict()
    assert card["tasks"]["idh"] | {"threshold": 0} == {
        "kind": "linear", "inputs": "exam", "features": 48, "threshold": 0, "positive": "mutant",
        "negative": "wildtype", "n_train": N_PATIENTS, "threshold_rule": result.threshold_rules["idh"],
    }  # fmt: skip
    assert card["tasks"]["outcome"]["inputs"] == "pair" and card["tasks"]["outcome"]["features"] == 3 * 48
    assert card["tasks"]["idh"]["threshold"] == result.thresholds["idh"]
    history = [json.loads(line) for line in (tmp_path / "model" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2] and "val_auc" in history[0]
    assert json.loads((tmp_path / "model" / "provenance.json").read_text())["config"]["epochs"] == 2

    heads = load_file(str(tmp_path / "model" / "heads.safetensors"))
    assert all(v.dtype == torch.float32 for v in heads.values())
    assert torch.equal(heads["idh.mean"], torch.zeros(48)) and torch.equal(heads["outcome.scale"], torch.ones(144))
    loaded = load_classifier(tmp_path / "model")  # the reader `umbif predict` uses
    assert loaded.method == "finetune" and loaded.heads["outcome"].threshold == result.thresholds["outcome"]
    cache = CacheDataset(cohort / "cache", dtype=torch.float32)
    exams = {entry["exam_id"]: i for i, entry in enumerate(cache.entries)}

    def cls(exam_ids) -> torch.Tensor:  # CLS embeddings from the exported (fine-tuned) encoder
        items = [cache[exams[e]] for e in exam_ids]
        return torch.from_numpy(
            loaded.embed(torch.stack([i["image"] for i in items]), torch.stack([i["present"] for i in items]))
        )

    expected = predict(result, cohort / "cache", tables)
    idh = tables["idh"]
    np.testing.assert_allclose(_linear_score(heads, "idh", cls(idh["exam_id"])), expected["idh"], atol=1e-5)
    outcome = tables["outcome"]
    pair = torch.cat([(b := cls(outcome["baseline_exam_id"])), (f := cls(outcome["exam_id"])), f - b], dim=1)
    np.testing.assert_allclose(_linear_score(heads, "outcome", pair), expected["outcome"], atol=1e-5)


def test_export_refuses_mlp_and_attention_heads(cohort: Path, tmp_path: Path) -> None:
    config = _config(head="mlp")
    model = build_model(UMBIFEncoder(MODEL), ("idh",), config)
    finetuned = TrainedModel(model, MODEL, config, {"idh": 0.5}, {"idh": "x"}, {"idh": 1}, [], {}, 1)
    with pytest.raises(ValueError, match="only linear heads"):
        save_finetuned(finetuned, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_cli_end_to_end(cohort: Path, tmp_path: Path) -> None:
    args = ["finetune", cohort / "manifest.csv", "--cache", cohort / "cache", "--encoder", cohort / "encoder"]
    yaml_file = tmp_path / "ft.yaml"
    yaml_file.write_text("amp: 'off'\nbatch_size: 8\n")
    result = _cli(*args, "--out", tmp_path / "model", "--tasks", "idh,outcome", "--epochs", "2", "--config", yaml_file)
    assert result.exit_code == 0, result.output
    assert "best epoch" in result.stdout
    card = json.loads((tmp_path / "model" / "classifier.json").read_text())
    assert set(card["tasks"]) == {"idh", "outcome"} and card["provenance"]["config"]["batch_size"] == 8
    assert len((tmp_path / "model" / "history.jsonl").read_text().splitlines()) == 2


def test_cli_errors_are_clear(cohort: Path, tmp_path: Path) -> None:
    table = Manifest.read(cohort / "manifest.csv").table
    uncached = table.iloc[:1].assign(exam_id="p99-0", patient_id="p99", mgmt="methylated")
    Manifest(pd.concat([table.assign(mgmt=""), uncached]), cohort).write(cohort / "no_mgmt.csv")
    manifest, no_mgmt = cohort / "manifest.csv", cohort / "no_mgmt.csv"
    base = ["--cache", cohort / "cache", "--encoder", cohort / "encoder", "--out", tmp_path / "m"]
    other_encoder = ["--cache", cohort / "cache", "--encoder", tmp_path, "--out", tmp_path / "m"]
    other_cache = ["--cache", tmp_path, "--encoder", cohort / "encoder", "--out", tmp_path / "m"]
    cases = [
        ([no_mgmt, *base, "--tasks", "mgmt"], ["no labelled samples for task 'mgmt'", "not cached"]),
        ([manifest, *base, "--tasks", "grade"], ["unknown task 'grade'"]),
        ([manifest, *base, "--head", "mlp"], ["only linear heads", "--head linear"]),
        ([manifest, *other_encoder], ["no encoder.safetensors"]),
        ([manifest, *other_cache], ["umbif preprocess"]),
    ]
    for args, messages in cases:
        result = _cli("finetune", *args)
        assert result.exit_code == 1, result.output
        for message in messages:
            assert message in result.output, (message, result.output)
    assert not (tmp_path / "m").exists()
    help_text = _cli("finetune", "--help").stdout
    for option in ("--cache", "--encoder", "--out", "--tasks", "--config", "--epochs", "--head", "--mode", "--seed"):
        assert option in help_text
